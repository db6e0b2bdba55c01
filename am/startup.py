"""Ctrl-C while a ``python -m am.<command>`` starts: one log line and exit code 130, not a traceback.

A command's module spends seconds importing torch and the package before its ``main()`` hands Ctrl-C
to :func:`am.cli.run_main`; a Ctrl-C in that time would print a traceback of wherever the import
machinery was, and end the process by SIGINT. The commands catch it themselves (see am.train's
``__main__``) and report it with these functions, as run_main reports a later one.

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
