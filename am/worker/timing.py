"""Where a worker's time goes, stage by stage, for its closing log line and for ``python -m am.bench``.

Stages run on several threads at once, so the figures are busy seconds of each stage (summed
over its threads), not shares of the wall time; divided by the tiles they are seconds per tile::

    clock = StageClock()
    with clock.timing("download"):
        data = storage.get_bytes(bucket, key)
    clock.per_tile(tiles=100)          # {"download": 0.004, ...}
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# In the order a tile meets them; h2d, compute and d2h come from the model (CUDA events on a GPU).
STAGES = ("receive", "download", "decode", "h2d", "compute", "d2h", "encode", "upload", "report", "delete")


class StageClock:
    """Thread-safe running totals of seconds per stage."""

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        """Add the time spent inside the block to ``stage``, also when the block raises."""
        start = self._clock()
        try:
            yield
        finally:
            self.add(stage, self._clock() - start)

    def totals(self) -> dict[str, float]:
        """Seconds per stage so far."""
        with self._lock:
            return dict(self._seconds)

    def per_tile(self, *, tiles: int) -> dict[str, float]:
        """Seconds per stage divided by ``tiles`` (every stage 0 when no tile was done)."""
        return {stage: (seconds / tiles if tiles else 0.0) for stage, seconds in self.totals().items()}


__all__ = ["STAGES", "StageClock"]
