# -*- test-case-name: harbor.test.test_names,harbor.test.test_fs,harbor.test.test_writer,harbor.test.test_collisions,harbor.test.test_headers,harbor.test.test_reader,harbor.test.test_mime,harbor.test.test_browse,harbor.test.test_search,harbor.test.test_changes -*-
"""
The Maildir store: the server's writer and the operator's reader.

  - L{harbor.store.names}: the layout of a Maildir and its file names.
  - L{harbor.store.fs}: the file-system calls a delivery makes
    (L{harbor.store.fs.IFileSystem}), C{syncfs(2)}, renaming without
    replacing, and making Maildirs.
  - L{harbor.store.lanes}: which finished messages go to which commit
    thread (pure), and the defaults of the commit settings.
  - L{harbor.store.commits}: the commit queue, its lanes run in threads.
  - L{harbor.store.writer}: the streaming delivery, the group commit and
    L{harbor.store.writer.MaildirStore}.
  - L{harbor.store.headers}: header blocks and values, decoded tolerantly.
  - L{harbor.store.reader}: finding, listing, marking seen and deleting
    stored messages, for the C{mailharbor} command.
  - L{harbor.store.mime}: a message taken apart into its text and
    attachments.
  - L{harbor.store.browse}: the web interface's view: the tree with its
    counts, pages of summaries with a cursor, the seen flag both ways.
  - L{harbor.store.summaries}: one line of those pages, and the matching
    of search words against it.
  - L{harbor.store.search}: the search words (L{harbor.store.search.SYNTAX}).
  - L{harbor.store.changes}: snapshots of directory listings and their
    differences, for live updates.

The writer imports no reactor; names, lanes, headers, reader, mime,
browse, summaries, search and changes import no
Twisted at all, so the C{mailharbor} command stays light.
"""

__all__ = [
    "browse",
    "changes",
    "commits",
    "fs",
    "headers",
    "lanes",
    "mime",
    "names",
    "reader",
    "search",
    "summaries",
    "writer",
]
