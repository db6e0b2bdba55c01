"""Per-tile completion state of a job: what is pending, done, or failed for good.

The orchestrator decides completion from worker reports and the dead-letter queue, never by
counting objects. Reports may arrive twice (at-least-once delivery); each tile counts once::

    tracker = JobTracker(["g/0000", "g/0001"], max_attempts=3)
    tracker.done("g/0000", compute_s=0.2)
    tracker.failed("g/0001", attempt=3, error="cannot decode")   # -> dead
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


class JobTracker:
    def __init__(self, names: Iterable[str], *, max_attempts: int) -> None:
        self._pending = set(names)
        self._total = len(self._pending)
        self._done: set[str] = set()
        self._dead: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self._max_attempts = max_attempts
        self.duplicates = 0
        self.compute_s = 0.0

    @property
    def max_attempts(self) -> int:
        """Receives a tile gets before it is given up (the queue's ``maxReceiveCount``)."""
        return self._max_attempts

    @property
    def total(self) -> int:
        return self._total

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._pending)

    @property
    def completed(self) -> frozenset[str]:
        return frozenset(self._done)

    @property
    def dead(self) -> dict[str, str]:
        return dict(self._dead)

    @property
    def finished(self) -> bool:
        return not self._pending

    def is_pending(self, name: str) -> bool:
        return name in self._pending

    def done(self, name: str, *, compute_s: float = 0.0) -> bool:
        """Record a finished tile; returns False for a duplicate or unknown report."""
        if name not in self._pending:
            self.duplicates += 1
            return False
        self._pending.discard(name)
        self._done.add(name)
        self.compute_s += compute_s
        return True

    def failed(self, name: str, *, attempt: int, error: str) -> bool:
        """Record a failed attempt; returns True when the tile has used up its attempts."""
        if name not in self._pending:
            return False
        self._errors[name] = error
        if attempt >= self._max_attempts:
            self.give_up(name, f"failed {attempt} times, last error: {error}")
            return True
        log.warning("tile %s failed (attempt %d of %d): %s", name, attempt, self._max_attempts, error)
        return False

    def give_up(self, name: str, reason: str) -> None:
        if name not in self._pending:
            return
        self._pending.discard(name)
        last = self._errors.get(name)
        self._dead[name] = reason if not last or last in reason else f"{reason} (last error: {last})"
        log.error("tile %s will not complete: %s", name, self._dead[name])
