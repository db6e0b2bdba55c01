"""Child processes that end with the process that started them.

Workers and the HTTP API's pipeline runs are started in their own process session, so a Ctrl-C
in the terminal reaches only their parent, which stops them in order. Should the parent die
without that (SIGKILL, a crash), the kernel's parent-death signal still stops them, so no worker
is left holding messages with nobody to collect its results.
"""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to send SIGTERM when the parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


__all__ = ["die_with_parent"]
