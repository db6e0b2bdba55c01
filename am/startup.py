"""Ctrl-C while a ``python -m am.<command>`` starts: one log line and exit code 130, not a traceback.

A command's module spends seconds importing torch and the package before its ``main()`` hands Ctrl-C
to :func:`am.cli.run_main`; a Ctrl-C in that time would print a traceback of wherever the import
machinery was, and end the process by SIGINT. The commands catch it themselves and report it with
these functions, as run_main reports a later one. Each command's ``__main__`` imports everything but
logging, os and sys inside a ``try``, ends it with :func:`hold_ctrl_c` when run as a command, answers
a KeyboardInterrupt there with :func:`interrupted_while_loading` (which re-raises it when imported by
a program), and runs ``main`` through :func:`run_command`.

This module runs before am.cli and everything heavy is loaded, and a Ctrl-C may come while it
loads too: it imports only what the interpreter has loaded already (logging, os, sys), so that
importing it takes no time, and nothing from am.
"""

from __future__ import annotations

import logging
import os
import sys

TYPE_CHECKING = False  # typing itself is not loaded yet: it is imported for the type checkers only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

# Exit code after Ctrl-C, as am.cli's EXIT_INTERRUPTED: needed before am.cli is loaded.
EXIT_INTERRUPTED = 130
# What a Ctrl-C while the modules load leaves: the command has not looked at its options yet.
NOTHING_DONE = "nothing was done, rerun the same command"


def log_interrupted(name: str, outcome: str) -> int:
    """Log that Ctrl-C stopped command ``name`` and what that left (``outcome``), in one line; returns 130.

    For a Ctrl-C that run_main cannot handle: one while the command's modules load or while its options
    are parsed. Where logging is not configured yet, the line takes the format am.cli's
    configure_logging gives every later one.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                            stream=sys.stderr)
    logging.getLogger(name).error("interrupted; %s", outcome)
    return EXIT_INTERRUPTED


def exit_interrupted(name: str, outcome: str = NOTHING_DONE) -> NoReturn:
    """:func:`log_interrupted`, then end the process with exit code 130 at once.

    For a Ctrl-C while the modules load, when there is nothing to clean up yet. Not sys.exit: a Ctrl-C
    that came through an exec() of a string on its way here (scipy imports numpy's names so) marks
    itself unhandled, and CPython would then end the process by SIGINT, even though it was handled.
    """
    os._exit(log_interrupted(name, outcome))


def interrupted_while_loading(module_name: str, name: str) -> NoReturn:
    """Answer a Ctrl-C that came while command ``name``'s module loaded; call it from that ``except KeyboardInterrupt``.

    Run as a command (``module_name`` is ``"__main__"``), nothing is done yet: :func:`exit_interrupted`.
    Imported by a program, the Ctrl-C is the program's to handle: it goes on up (a bare ``raise`` here
    re-raises the exception the caller's ``except`` is handling).
    """
    if module_name != "__main__":
        raise  # bare: called from the command's except clause, which is handling the KeyboardInterrupt
    exit_interrupted(name)


def hold_ctrl_c() -> None:
    """Hold SIGINT from the end of the imports until :func:`run_command` runs ``main`` inside its ``try``: a
    Ctrl-C while the module's definitions run in between would end in a traceback, few as the microseconds are."""
    import signal  # loaded by now, with the command's other modules

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def run_command(main: Callable[[], int], name: str, outcome: str) -> NoReturn:
    """Exit with ``main()``'s code; a Ctrl-C held since the imports, or one while the options are parsed and
    checked (before run_main takes Ctrl-C over), is reported as :func:`log_interrupted` with ``outcome``."""
    import signal

    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        code = main()
    except KeyboardInterrupt:
        code = log_interrupted(name, outcome)
    sys.exit(code)
