"""How workers are started: the only thing, besides the endpoint, that differs between backends.

A launcher starts ``count`` workers with a given environment, reports how many are alive, and
stops what it started. The orchestrator never knows more than this interface, and a few optional
members: ``exit_codes()`` (one code per worker started, None while running or unknown; 0 means
it left idle, so a job still sending tiles starts the workers again), ``log_tail()`` (text
for the error when every worker has stopped, under ``log_tail_heading`` where the launcher names
it), ``rerun_advice()`` and ``timeout_advice()`` (what to fix before a rerun, where the launcher
knows that its workers could not start, or never started running, so that a plain rerun would
fail alike; None otherwise) and ``kill()`` (end the workers at once, when the user quits a
clean-up; only workers that die with this process have one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Launcher(Protocol):
    def start(self, count: int, environment: Mapping[str, str]) -> None:
        """Start ``count`` workers whose settings come from ``environment`` (AM_* keys)."""

    def alive(self) -> int:
        """How many started workers are running or about to (pending ECS tasks count)."""

    def stop(self) -> None:
        """Stop every worker this launcher started; safe to call twice and after failures."""
