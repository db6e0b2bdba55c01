"""The messages a worker holds, and the heartbeat that keeps them hidden while it works on them.

SQS hides a received message for its visibility timeout; a batch that runs longer would be
delivered to a second worker. The heartbeat extends every held message every third of the
timeout, and the lease lock makes an extension and a release never cross (a released
message must not be hidden again by a late heartbeat)::

    lease = Lease()
    with Heartbeat(queue, lease, visibility_timeout_s=120):
        lease.add(received)
        ...
        lease.remove(handles)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from types import TracebackType

from am.errors import TransportError
from am.transport.queue import MAX_BATCH, Queue, Received

log = logging.getLogger(__name__)

# Extend this often per visibility timeout, so two missed beats still leave the message hidden.
BEATS_PER_TIMEOUT = 3


class Lease:
    """Thread-safe set of the receipt handles a worker holds."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._held: dict[str, Received] = {}

    def add(self, received: Iterable[Received]) -> None:
        with self.lock:
            for r in received:
                self._held[r.receipt_handle] = r

    def remove(self, handles: Iterable[str]) -> None:
        """Stop holding ``handles``; waits for a heartbeat in progress, so it cannot re-hide them afterwards."""
        with self.lock:
            for handle in handles:
                self._held.pop(handle, None)

    def handles(self) -> list[str]:
        with self.lock:
            return list(self._held)

    def __len__(self) -> int:
        with self.lock:
            return len(self._held)


class Heartbeat:
    """A daemon thread extending the visibility of every held message while the worker runs."""

    def __init__(self, queue: Queue, lease: Lease, *, visibility_timeout_s: int) -> None:
        self._queue = queue
        self._lease = lease
        self._timeout_s = visibility_timeout_s
        self.interval_s = max(1.0, visibility_timeout_s / BEATS_PER_TIMEOUT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="am-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def beat(self) -> None:
        """Extend every held message once, a chunk of 10 at a time, holding the lease lock throughout."""
        with self._lease.lock:
            handles = self._lease.handles()
            for start in range(0, len(handles), MAX_BATCH):
                self._extend(handles[start : start + MAX_BATCH])
        if handles:
            log.debug("extended visibility of %d held message(s) by %d s", len(handles), self._timeout_s)

    def _extend(self, handles: Sequence[str]) -> None:
        try:
            self._queue.change_visibility_many(handles, self._timeout_s)
        except TransportError as exc:
            # The work goes on: if a message did become visible, a second worker may repeat the
            # tile, which at-least-once delivery allows (outputs are idempotent).
            log.warning("could not extend the visibility of %d held message(s): %s", len(handles), exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()


__all__ = ["BEATS_PER_TIMEOUT", "Heartbeat", "Lease"]
