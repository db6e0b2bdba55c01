"""Waiting for something another thread or process does: poll a condition until it holds, or fail saying what.

    wait_until(lambda: log.exists(), timeout=60, what="the worker's log")

The timeout only bounds a hang; a test never asserts how fast a thing happened (benchmarks/ measures that).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, poll_s: float = 0.02,
               detail: Callable[[], str] | None = None) -> T:
    """Call ``predicate`` every ``poll_s`` until it returns something true, and return that.

    After ``timeout`` seconds, raise AssertionError naming ``what`` was awaited, followed by ``detail()``
    (a log tail, say) when given. ``predicate`` may raise to give up early (a process that exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout} s waiting for {what}"
            raise AssertionError(f"{message}:\n{detail()}" if detail is not None else message)
        time.sleep(poll_s)
