# -*- test-case-name: harbor.test.test_cli -*-
"""
The C{mailharbor} command: look at, and tidy, the mail the server has
stored, and check its configuration.

MailHarbor only receives; reading is left to any Maildir-capable mail
reader.  This command answers the questions an operator has before one is
set up, or while debugging delivery: what arrived, from whom, for whom, how
much is stored, and what exactly a message holds.  Reading the store is
L{harbor.store.reader}'s job; this package turns command lines into calls to
it and its results into text or JSON:

  - L{harbor.cli.main}: runs the command, and turns failures into
    messages and exit statuses;
  - L{harbor.cli.parser}: the command line, one function per sub-command;
  - L{harbor.cli.commands}: what each sub-command does;
  - L{harbor.cli.formatting}: how the results are laid out and written.

C{harbor.cli.main} is a public import path: it is the C{mailharbor}
console script's entry point (C{harbor.cli:main} in C{setup.cfg}, which
installed scripts and C{tests/test_packaging.py} name), so this package
re-exports L{harbor.cli.main.main}.  The function shadows the module of
the same name as an attribute of this package: import other names from
the module with C{from harbor.cli.main import ...}, which finds the
module.

Nothing here imports the reactor or L{twisted.mail}: the command must start
quickly and must not affect, or be affected by, the reactor a server would
install.  The Twisted-heavy modules are imported only by the commands
that need them, when they run: L{harbor.tap} by C{check-config} and
L{harbor.hooks} by C{hooks}; neither imports the reactor.
"""

from harbor.cli.main import main

__all__ = ["main"]
