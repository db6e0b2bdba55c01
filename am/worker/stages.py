"""The worker's two hand-offs around the model: a prefetch stage before it and an upload stage after it.

The model runs on one thread (the compute stage). Everything else a tile needs is I/O or
codec work that can run while the model computes, on thread pools:

- :class:`Prefetcher`: a receiving thread asks for the next batch while the model computes
  the current one, and a pool downloads and decodes its items. At most ``depth`` batches wait
  ahead of the model (back-pressure), because every received message is hidden only while the
  worker holds it, and a queue of prefetched work longer than that would spend the messages'
  visibility on waiting;
- :class:`Uploader`: a pool encodes and writes each item of a computed batch, and one settling
  thread then settles the batch as a whole (report, then delete), in the order batches were
  computed. At most ``depth`` batches are unsettled; beyond that the model waits.

Both are generic over the item type and know nothing of SQS, S3 or models, so a format that
carries several tiles per object or per message slots in by changing what an item is and what
``fetch``/``put`` do. An unexpected exception in any stage goes to ``on_error`` once, and the
stage then stops; per-item failures are the callbacks' business (they mark the item)::

    prefetcher = Prefetcher(receive=get_batch, fetch=download_and_decode, discard=release, pool=io, depth=2,
                            on_error=crash)
    uploader = Uploader(put=encode_and_upload, settle=report_then_delete, pool=io, depth=2, on_error=crash)
    prefetcher.start(); uploader.start()
    while (batch := prefetcher.take()) is not None:
        compute(batch)
        uploader.submit(batch)
    uploader.close(); uploader.join()
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Executor, Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from am.errors import WorkerError

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long blocking waits sleep before looking at the stop flags again.
POLL_S = 0.05


@dataclass
class _Pending(Generic[T]):
    items: list[T]
    futures: list[Future[None]]


class Prefetcher(Generic[T]):
    """Receives batches on its own thread and fetches their items on ``pool``, at most ``depth`` batches ahead.

    ``receive()`` returns the next batch (a non-empty list), or None when there will be no more
    (idle, or stopping). ``fetch(item)`` runs on the pool for every item. ``discard(batch)`` is
    called once, with every item received and never to be handed out, because :meth:`stop` came
    first: the owner gives its messages back. It is called only once no receive is under way: a
    receive (a long poll of up to 20 s) running when the items become visible again would take them
    straight back, each such round trip costing every message one of its few receives.
    """

    def __init__(
        self,
        *,
        receive: Callable[[], list[T] | None],
        fetch: Callable[[T], None],
        discard: Callable[[list[T]], None],
        pool: Executor,
        depth: int,
        on_error: Callable[[BaseException], None],
    ) -> None:
        if depth < 1:
            raise WorkerError(f"prefetch depth must be at least 1 batch, got {depth}")
        self._receive = receive
        self._fetch = fetch
        self._discard = discard
        self._pool = pool
        self._on_error = on_error
        self._slots = threading.Semaphore(depth)
        self._ready: deque[_Pending[T]] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stopped = False
        self._started = False
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="am-receive", daemon=True)

    def start(self) -> None:
        with self._lock:
            self._started = True
        self._thread.start()

    def stop(self) -> None:
        """Receive nothing more and discard every batch not handed out yet; safe to call repeatedly.

        With a receive under way, the receiving thread discards them when it returns, together with
        whatever it received; otherwise they are discarded here, now.
        """
        with self._lock:
            self._stopped = True
            self._arrived.notify_all()
            left = self._unclaimed() if self._ended or not self._started else []
        self._discard_all(left)

    def join(self, timeout: float) -> bool:
        """Wait for the receiving thread (after :meth:`stop`, a receive under way ends it); True once ended."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def waiting(self) -> int:
        """Batches received and not yet taken."""
        with self._lock:
            return len(self._ready)

    def take(self) -> list[T] | None:
        """The next batch in the order received, once every item is fetched; None after the last one or a stop.

        An unexpected exception raised by ``fetch`` is raised here.
        """
        with self._lock:
            while not self._ready and not self._stopped and not self._ended:
                self._arrived.wait(POLL_S)
            if self._stopped or not self._ready:
                return None
            pending = self._ready.popleft()
        self._slots.release()
        for future in pending.futures:
            future.result()
        return pending.items

    def _run(self) -> None:
        try:
            while self._acquire_slot():
                batch = self._receive()
                if not batch:
                    self._slots.release()
                    return
                with self._lock:
                    if self._stopped:
                        # Stopped during the receive: keep it with the others, all given back below at once.
                        self._ready.append(_Pending(batch, []))
                        self._slots.release()
                        return
                    self._ready.append(_Pending(batch, [self._pool.submit(self._fetch, item) for item in batch]))
                    self._arrived.notify_all()
        except BaseException as exc:
            self._on_error(exc)
        finally:
            with self._lock:
                self._ended = True
                self._arrived.notify_all()
                left = self._unclaimed() if self._stopped else []
            try:
                self._discard_all(left)
            except BaseException as exc:
                self._on_error(exc)

    def _unclaimed(self) -> list[T]:
        """Take every item received and not handed out (call with the lock held)."""
        left = [item for pending in self._ready for item in pending.items]
        self._ready.clear()
        return left

    def _discard_all(self, items: list[T]) -> None:
        if items:
            self._discard(items)

    def _acquire_slot(self) -> bool:
        """Wait for room ahead of the model; False once stopped."""
        while not self._slots.acquire(timeout=POLL_S):
            if self._stopped:
                return False
        if self._stopped:
            self._slots.release()
            return False
        return True


class Uploader(Generic[T]):
    """Runs ``put(item)`` on ``pool`` for every item, then ``settle(batch)`` per batch in submission order.

    At most ``depth`` batches are submitted and not yet settled; :meth:`submit` waits beyond
    that. After an unexpected exception in ``put`` or ``settle`` nothing more is settled, and
    :meth:`submit` refuses further batches.
    """

    def __init__(
        self,
        *,
        put: Callable[[T], None],
        settle: Callable[[list[T]], None],
        pool: Executor,
        depth: int,
        on_error: Callable[[BaseException], None],
    ) -> None:
        if depth < 1:
            raise WorkerError(f"upload depth must be at least 1 batch, got {depth}")
        self._put = put
        self._settle = settle
        self._pool = pool
        self._on_error = on_error
        self._slots = threading.Semaphore(depth)
        self._queue: queue.SimpleQueue[_Pending[T] | None] = queue.SimpleQueue()
        self._failed = threading.Event()
        # Guards "closed?" and the pool submission together, so no batch reaches a pool that the
        # worker shuts down right after closing the uploader.
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="am-settle", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, batch: Sequence[T]) -> bool:
        """Start writing ``batch``; waits while ``depth`` batches are unsettled; False after a failure."""
        while not self._slots.acquire(timeout=POLL_S):
            if self._failed.is_set():
                return False
        items = list(batch)
        with self._lock:
            if self._failed.is_set() or self._closed:
                self._slots.release()
                return False
            self._queue.put(_Pending(items, [self._pool.submit(self._put, item) for item in items]))
        return True

    def close(self) -> None:
        """No more batches (later submits return False): the settling thread ends after those already submitted."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the settling thread; True once it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def failed(self) -> bool:
        return self._failed.is_set()

    def _run(self) -> None:
        try:
            while (pending := self._queue.get()) is not None:
                for future in pending.futures:
                    future.result()
                self._settle(pending.items)
                self._slots.release()
        except CancelledError:
            # Only a worker that gave up waiting cancels uploads; it has released those messages already.
            log.info("uploads cancelled on shutdown; their messages were released for another worker")
        except BaseException as exc:
            self._failed.set()
            self._on_error(exc)


__all__ = ["POLL_S", "Prefetcher", "Uploader"]
