"""Per-tile completion state of a job: what is pending, done, or failed for good.

The orchestrator decides completion from worker reports and the dead-letter queue, never by
counting objects. Reports may arrive twice (at-least-once delivery); each tile counts once::

    tracker = JobTracker(["g/0000", "g/0001"], max_attempts=3)
    tracker.done("g/0000", compute_s=0.2)
    tracker.failed("g/0001", attempt=3, error="cannot decode")   # -> dead

A dead tile whose message is re-driven and then done completes after all, as long as the job
is not finished (other tiles still pending); afterwards the report is a duplicate.

A job whose tiles are still being cut while the first ones are segmented starts with
``expect_more=True``, adds names as it sends them, and seals the tracker after the last one:
until then it is never finished, even with nothing pending::

    tracker = JobTracker([], max_attempts=3, expect_more=True)
    tracker.add(["g/0000"])
    tracker.seal()
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


class JobTracker:
    def __init__(self, names: Iterable[str], *, max_attempts: int, expect_more: bool = False) -> None:
        self._pending = set(names)
        self._total = len(self._pending)
        self._sealed = not expect_more
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
    def sealed(self) -> bool:
        """True once every tile of the job is known (no more :meth:`add`)."""
        return self._sealed

    @property
    def finished(self) -> bool:
        """Every tile is known and none is pending; a job still sending tiles is never finished."""
        return self._sealed and not self._pending

    def add(self, names: Iterable[str]) -> None:
        """Tiles just sent out; raises ValueError after :meth:`seal` or for a name the job already has."""
        if self._sealed:
            raise ValueError("the job's tiles are sealed: no tile can be added")
        new = set(names)
        again = {name for name in new if name in self._pending or name in self._done or name in self._dead}
        if again:
            raise ValueError(f"tile(s) added twice to one job: {', '.join(sorted(again))}")
        self._pending.update(new)
        self._total += len(new)

    def seal(self) -> None:
        """Every tile has been added: from now on the job finishes when none is pending."""
        self._sealed = True

    @property
    def pending_count(self) -> int:
        """How many tiles are pending, without copying the set (checked once per chunk sent)."""
        return len(self._pending)

    def is_pending(self, name: str) -> bool:
        return name in self._pending

    def accepts(self, name: str) -> bool:
        """Whether a ``done`` report for ``name`` would complete it: pending, or given up while the job still runs.

        A tile given up may come back: ``am.scale redrive`` sends its dead-lettered message to the
        workers again once the cause is fixed, and its mask counts as long as other tiles keep the
        job going. Once the job is finished its outcome is settled, and a late report is a duplicate.
        """
        return name in self._pending or (name in self._dead and not self.finished)

    def done(self, name: str, *, compute_s: float = 0.0) -> bool:
        """Record a finished tile (one given up, too, while the job runs); False for a duplicate or unknown report."""
        if name in self._dead and not self.finished:
            log.info("tile %s completed after it had been given up (%s)", name, self._dead.pop(name))
            self._errors.pop(name, None)
        elif name not in self._pending:
            self.duplicates += 1
            return False
        self._pending.discard(name)
        self._done.add(name)
        self.compute_s += compute_s
        return True

    def last_error(self, name: str) -> str:
        """The error a worker reported for the tile's last failed attempt; '' when none was reported."""
        return self._errors.get(name, "")

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
