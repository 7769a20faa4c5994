# -*- test-case-name: harbor.test.test_writer,harbor.test.test_collisions -*-
"""
The pieces of a delivery that concern one file: a recipient's copy on its
way from C{tmp/} to C{new/}, the message it becomes once stored, the
companion files (hook jobs) that must be durable with it, and the error of
a name already taken.

L{harbor.store.writer} strings these together into a delivery and a group
commit; they are apart so that each reads on its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from attrs import frozen

from harbor.store.fs import IFileSystem, MessageFile, StorageError, quietly


class NameTaken(StorageError):
    """
    A copy's name was taken by a file that is not this delivery's (in
    C{tmp/} or in C{new/}), and nothing was replaced.  The delivery is not
    spoiled: its copies are back in C{tmp/} (or in memory), none is in
    C{new/}, its companion is removed, and it may be committed again once
    L{PendingDelivery.renew} has given it new names.
    """


@frozen
class Companion:
    """
    Files that must be durable with a message, and gone if it is not
    stored: its hooks' jobs.  L{GroupCommit} writes them once the message's
    files are durable and before they are renamed into C{new/}, so that a
    250 reply means both are on disk, and removes them if the delivery
    fails after that.

    @ivar write: Writes them durably (blocking); raises if it cannot,
        leaving none behind.
    @ivar remove: Removes them again (blocking); never raises.
    @ivar what: What writing them is, for the error: C{"recording the
        message for its hooks"}.
    """

    write: Callable[[], None]
    remove: Callable[[], None]
    what: str


@frozen
class StoredMessage:
    """
    A message copy that is safely in a Maildir's C{new/}.

    @ivar id: The unique part of the file name, given to the client in the
        250 reply and accepted by C{mailharbor show}.
    @ivar path: The file's path.
    @ivar size: The file's size in bytes.
    """

    id: str
    path: str
    size: int


class Copy:
    """
    One recipient's copy: its name, its Maildir, its own header block and,
    while a spilled message is being written, its open file in C{tmp/}.

    @ivar created: Whether this delivery created the copy's file in
        C{tmp/} (and so must remove it if the delivery fails).
    """

    def __init__(self, name: str, directory: str, makeHeader: Callable[[str], bytes]) -> None:
        """
        @param makeHeader: Given the copy's name, the bytes that start it
            (its trace headers name it): called again by L{rename}.
        """
        self.directory = directory
        self.temporaryDirectory = os.path.join(directory, "tmp")
        self._makeHeader = makeHeader
        self.file: MessageFile | None = None
        self.created = False
        self.rename(name)

    def rename(self, name: str) -> None:
        """
        Call the copy C{name} from now on, in its header too; its file, if
        it had one, is no longer its own.
        """
        self.name = name
        self.header = self._makeHeader(name)
        self.temporaryPath = os.path.join(self.temporaryDirectory, name)

    def create(self, fs: IFileSystem, body: bytes | bytearray) -> None:
        """
        Create the copy's file in C{tmp/} and write its header and C{body}
        in one write.

        @raise NameTaken: if a file of its name is in C{tmp/} already.
        @raise StorageError: if that fails; a file that was created is
            marked in C{created} for L{remove}.
        """
        try:
            self.file = fs.create(self.temporaryPath)
        except FileExistsError as e:
            raise NameTaken(f"creating the message file: {self.name} is taken") from e
        except OSError as e:
            raise StorageError.fromOSError("creating the message file", e) from e
        self.created = True
        try:
            self.file.write(self.header + body)
        except OSError as e:
            raise StorageError.fromOSError("writing the message", e) from e

    def remove(self, fs: IFileSystem) -> None:
        """
        Close the copy's file, and remove it from C{tmp/} if this delivery
        created it; never raises.
        """
        f, self.file = self.file, None
        if f is not None:
            quietly(f.close)
        if self.created:
            self.created = False
            quietly(fs.unlink, self.temporaryPath)


def unpublish(fs: IFileSystem, stored: Sequence[StoredMessage]) -> None:
    """
    Remove copies from C{new/} again, durably; never raises.
    """
    for message in stored:
        quietly(fs.unlink, message.path)
    for directory in dict.fromkeys(os.path.dirname(message.path) for message in stored):
        quietly(fs.syncDirectory, directory)
