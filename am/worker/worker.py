"""The worker loop: receive tile messages, segment the tiles, report, delete.

Delivery is at least once. For every message the worker either (1) writes the mask, reports
``done`` on the job's results queue and deletes the message, or (2) reports ``failed`` and
hides the message for a short backoff, so it is tried again and, after the queue's
``maxReceiveCount`` receives, lands in the dead-letter queue. A failure on the message's last
receive is moved there by the worker itself, before it is reported: the job gives up on the tile
at that report and, once no other tile is pending, ends and deletes its dead letters, while SQS
would move a message left hidden only at a later receive (on AWS, one that wakes a GPU task for
nothing), an orphan of an ended job. A message of a job that has ended (its results queue is
gone: nobody waits for it) is deleted, also on its last receive, never dead-lettered. A message
that does not parse or whose keys leave its job's prefix is logged, left untouched and hidden for
the same backoff, so the dead-letter queue takes it after as many receives. Nothing is ever deleted
that was not done, dead-lettered, or of an ended job::

    worker = Worker(queue, storage, models, input_bucket="in", output_bucket="out",
                    results=lambda url: Queue(sqs, url), batch_size=4, idle_exit_s=60,
                    visibility_timeout_s=120, worker_id="w1")
    exit_code = worker.run()          # worker.stop() from a signal handler ends it cleanly

Threads: ``run()`` supervises. The model runs on the compute thread, one batch at a time; the
prefetch stage (:class:`~am.worker.stages.Prefetcher`) receives, downloads and decodes up to
``prefetch_batches`` batches ahead of it, and the upload stage (:class:`~am.worker.stages.Uploader`)
encodes, writes, reports and deletes up to ``upload_batches`` batches behind it. A heartbeat
thread keeps every held message hidden, prefetched ones included.

Stopping finishes the batch being computed and those being uploaded, gives the prefetched batches
back (visibility 0) once the receive under way has returned (at most one long poll, 20 s: given
back earlier, they would be taken straight back by it, a second receive of each for one stop), and
releases whatever is left after ``stop_grace_s``; aborting releases everything at once. An
unexpected error in any stage stops the worker the same way and makes :meth:`Worker.run` return 1;
so does a missing input or output bucket, which is no tile's fault (failing the tiles would move
the whole queue to the dead-letter queue), an ``s3://`` model not yet loaded whose bucket or object
does not exist (a mistyped model URI), and an S3 that stays throttled or unreachable for a tile's
transfer, or a model's download, beyond ``outage_s`` (:class:`~am.worker.outage.StorageOutage`): until
then the transfer is retried with its message held, so no tile is charged a failure for an outage.
An endpoint whose certificate does not verify against the CA bundle, or a CA bundle that cannot be read
(:class:`~am.transport.retry.UntrustedEndpoint`), stops it the same way at once: no wait fixes it. A model call
(``batch_size`` tiles) still running after ``max_batch_s`` is taken for a hung device: everything
held is released and :meth:`Worker.run` returns 1. A stop while idle does not wait for the long
poll in progress: should that poll still deliver messages after the process has gone, they reappear
when their visibility timeout ends. A stop whose grace ran out while that poll was under way gives
everything back and waits up to ``RECEIVE_SETTLE_S`` more for the poll, which may take some back.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import cv2

from am.errors import MessageError, MissingBucket, TransportError, WorkerError
from am.messages import RESULT_DONE, RESULT_FAILED, TileMessage, TileResult
from am.transport.queue import MAX_RECEIVE, MAX_VISIBILITY_S, MAX_WAIT_S, Queue, Received, is_missing_queue
from am.transport.storage import Storage
from am.worker.batch import NO_TILES_FAULT, TileSteps, TileWork, TransferAbandoned
from am.worker.config import (
    DEFAULT_MAX_BATCH_S,
    DEFAULT_OUTAGE_PATIENCE_S,
    DEFAULT_STOP_TIMEOUT_S,
    STOP_RELEASE_MARGIN_S,
)
from am.worker.lease import Heartbeat, Lease
from am.worker.models import MissingModel, Predictor
from am.worker.stages import Prefetcher, Uploader
from am.worker.timing import StageClock

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
# A failed tile is hidden for min(2**attempt, this) seconds before it is tried again.
MAX_BACKOFF_S = 30
# After a stop request, how long the work in hand may take before it is released instead, when
# whoever runs the worker does not say (python -m am.worker derives it from AM_STOP_TIMEOUT_S).
STOP_GRACE_S = DEFAULT_STOP_TIMEOUT_S - STOP_RELEASE_MARGIN_S
# Parallel S3 transfers (with PNG decode or encode) per stage.
TRANSFER_THREADS = 8
# Batches received ahead of the model: one ready when it finishes, one arriving. More would only
# spend the held messages' visibility on waiting.
PREFETCH_BATCHES = 2
# Batches computed and not yet settled before the model waits for the uploads.
UPLOAD_BATCHES = 2
_SUPERVISE_INTERVAL_S = 0.1
# Errors that stop the worker though no tile is at fault: its messages go back for another worker.
_NO_TILES_FAULT: tuple[type[BaseException], ...] = (MissingBucket, MissingModel, *NO_TILES_FAULT)
# After giving messages back on a stop, how long to wait for a receive already under way: its long
# poll would take them straight back, and a worker exiting then hides them from every other worker
# for a whole visibility timeout. Given back, they reach that poll at once, and it returns them.
RECEIVE_SETTLE_S = 2.0
# The longest poll while the worker holds messages. A stop waits for the poll under way before it
# gives the prefetched ones back (made visible earlier, that poll would take them back): a short poll
# keeps that wait short, at the cost of a few more empty receives while batches are in hand.
HELD_WAIT_S = 5
# OpenCV's threads in a worker process. Its parallelism is the stage pools (PNG codecs beside the
# model) and, behind a GPU, the post-processing pool; OpenCV's own threads inside each of those only
# crowd the cores (on 2 cores, 2 post-processing threads did 1.5-1.7 times the tiles of one with
# OpenCV at 1 thread, 1.3 times at its default of one per core).
OPENCV_THREADS = 1


@contextmanager
def opencv_threads_of_a_worker() -> Iterator[None]:
    """OpenCV at a worker's thread count while the block runs, restored after: a benchmark of the
    worker's steps in another process (am.bench) must measure them as a worker runs them."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(OPENCV_THREADS)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


class ResultSender(Protocol):
    """Where TileResults go: a :class:`~am.transport.queue.Queue` for the job's results queue URL.

    ``depth`` tells whether the queue still exists (a TransportError that
    :func:`~am.transport.queue.is_missing_queue` recognises when it does not).
    """

    def send_many(self, bodies: Sequence[str]) -> None: ...

    def depth(self) -> dict[str, int]: ...


@dataclass
class WorkerStats:
    """What a worker did, for its closing log line and the benchmark."""

    done: int = 0
    failed: int = 0
    rejected: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    # When the last tile was settled as done (monotonic), for throughput figures without the idle tail.
    last_done: float = 0.0
    clock: StageClock = field(default_factory=StageClock)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class Worker:
    """Consumes the tile queue until idle for ``idle_exit_s``, stopped, or aborted; see the module docstring."""

    def __init__(
        self,
        queue: Queue,
        storage: Storage,
        predictor_for: Callable[[str], Predictor],
        *,
        input_bucket: str,
        output_bucket: str,
        results: Callable[[str], ResultSender],
        batch_size: int,
        idle_exit_s: float,
        visibility_timeout_s: int,
        worker_id: str,
        max_receives: int = 0,
        dead_letters: Queue | None = None,
        max_backoff_s: int = MAX_BACKOFF_S,
        stop_grace_s: float = STOP_GRACE_S,
        transfer_threads: int = TRANSFER_THREADS,
        prefetch_batches: int = PREFETCH_BATCHES,
        upload_batches: int = UPLOAD_BATCHES,
        max_batch_s: float = DEFAULT_MAX_BATCH_S,
        outage_s: float = DEFAULT_OUTAGE_PATIENCE_S,
    ) -> None:
        if batch_size < 1:
            raise WorkerError(f"batch size must be at least 1, got {batch_size}")
        if not (math.isfinite(idle_exit_s) and idle_exit_s > 0):
            raise WorkerError(f"idle exit must be a finite number of seconds > 0, got {idle_exit_s}")
        if not (math.isfinite(stop_grace_s) and stop_grace_s >= 0):
            raise WorkerError(f"stop grace must be a finite number of seconds >= 0, got {stop_grace_s}")
        if not (math.isfinite(max_batch_s) and max_batch_s > 0):
            raise WorkerError(f"the longest batch must be a finite number of seconds > 0, got {max_batch_s}")
        if not (math.isfinite(outage_s) and outage_s >= 0):
            raise WorkerError(f"patience with an S3 outage must be a finite number of seconds >= 0, got {outage_s}")
        if not 1 <= visibility_timeout_s <= MAX_VISIBILITY_S:
            raise WorkerError(f"visibility timeout {visibility_timeout_s} s is outside 1..{MAX_VISIBILITY_S} s")
        if transfer_threads < 1 or prefetch_batches < 1 or upload_batches < 1:
            raise WorkerError(f"transfer threads ({transfer_threads}), prefetch batches ({prefetch_batches}) and "
                              f"upload batches ({upload_batches}) must each be at least 1")
        self._queue = queue
        self._storage = storage
        self._predictor_for = predictor_for
        self._input_bucket = input_bucket
        self._output_bucket = output_bucket
        self._results = results
        self._batch_size = batch_size
        self._idle_exit_s = idle_exit_s
        self._visibility_s = visibility_timeout_s
        # The tile queue's maxReceiveCount and its dead-letter queue (0 and None where it has none:
        # failures are then only hidden for their backoff, as SQS dead-letters them).
        self._max_receives = max_receives
        self._dead_letters = dead_letters
        self._max_backoff_s = max_backoff_s
        self._stop_grace_s = stop_grace_s
        self._transfer_threads = transfer_threads
        self._prefetch_batches = prefetch_batches
        self._upload_batches = upload_batches
        self._max_batch_s = max_batch_s
        self._outage_s = outage_s
        # The supervisor's watch (monotonic), None between batches: when the batch began until its first
        # model call returns (a model's load and compilation count with that call), then when the last
        # call returned. A batch holds messages of up to 256 tiles each, so it may take many calls.
        self._call_started: float | None = None
        self.worker_id = worker_id
        self.stats = WorkerStats()
        self._lease = Lease()
        self._stopping = threading.Event()
        self._aborting = threading.Event()
        # Set once the worker has let go of its messages (released them all, or is exiting): a transfer
        # retrying through an S3 outage then stops at once.
        self._abandoned = threading.Event()
        self._broken = threading.Event()
        self._crash: BaseException | None = None
        self._crash_lock = threading.Lock()
        self._idle_s = 0.0
        self._waiting_for_held = False
        self._gave_back_on_stop = False
        self._senders: dict[str, ResultSender] = {}
        # Most tiles in a message of the last receive: sizes the next one (at first, ask for one message).
        self._tiles_per_message = batch_size

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop receiving; finish the work in hand, then :meth:`run` returns 0. Safe to call repeatedly."""
        self._stopping.set()

    def abort(self) -> None:
        """Release every held message now and make :meth:`run` return at once (non-zero)."""
        self._stopping.set()
        self._aborting.set()
        self._abandoned.set()

    def run(self) -> int:
        """Work until idle, stopped or aborted; returns the process exit code (0 unless aborted or broken)."""
        self.stats = WorkerStats()
        self._idle_s = 0.0
        self._waiting_for_held = False
        if not self._aborting.is_set():
            self._abandoned.clear()
        log.info("worker %s consuming %s (batch %d, %d batch(es) prefetched, visibility %d s, idle exit %.0f s, "
                 "stop grace %.0f s)", self.worker_id, self._queue.name, self._batch_size, self._prefetch_batches,
                 self._visibility_s, self._idle_exit_s, self._stop_grace_s)
        heartbeat = Heartbeat(self._queue, self._lease, visibility_timeout_s=self._visibility_s)
        fetch_pool = ThreadPoolExecutor(self._transfer_threads, thread_name_prefix="am-fetch")
        put_pool = ThreadPoolExecutor(self._transfer_threads, thread_name_prefix="am-put")
        steps = TileSteps(self._storage, self._predictor_for, input_bucket=self._input_bucket,
                          output_bucket=self._output_bucket, clock=self.stats.clock,
                          tiles_per_call=self._batch_size, call_returned=self._model_call_returned,
                          outage_s=self._outage_s, abandoned=self._abandoned)
        prefetcher: Prefetcher[TileWork] = Prefetcher(
            receive=self._receive, fetch=steps.fetch, discard=self._give_back, pool=fetch_pool,
            depth=self._prefetch_batches, on_error=self._fail)
        uploader: Uploader[TileWork] = Uploader(put=steps.put, settle=self._settle, pool=put_pool,
                                                depth=self._upload_batches, on_error=self._fail)
        thread = threading.Thread(target=self._compute, args=(prefetcher, uploader, steps), name="am-compute",
                                  daemon=True)
        with heartbeat:
            try:
                if not self._stopping.is_set():
                    prefetcher.start()
                    uploader.start()
                    thread.start()
                code = self._supervise(thread, prefetcher)
            finally:
                self._abandoned.set()
                prefetcher.stop()
                if self._gave_back_on_stop and not self._aborting.is_set():
                    prefetcher.join(RECEIVE_SETTLE_S)
                # The compute thread may still be running (grace period over, or abort): it must not
                # hand another batch to the pools shut down below.
                uploader.close()
                # Wait for transfers only when nothing still uses them; an abort must not wait at all.
                idle = not thread.is_alive()
                fetch_pool.shutdown(wait=idle, cancel_futures=True)
                put_pool.shutdown(wait=idle, cancel_futures=True)
        s = self.stats
        log.info("worker %s exits with %d: %d tile(s) done, %d failed, %d rejected, %d batch(es) in %.1f s",
                 self.worker_id, code, s.done, s.failed, s.rejected, s.batches, s.seconds)
        if s.done:
            log.info("busy ms per tile by stage: %s", ", ".join(
                f"{stage} {seconds * 1000:.1f}" for stage, seconds in s.clock.per_tile(tiles=s.done).items()))
        return code

    # -- supervision (calling thread) ----------------------------------------------------

    def _supervise(self, thread: threading.Thread, prefetcher: Prefetcher[TileWork]) -> int:
        stop_seen_at: float | None = None
        while thread.is_alive():
            started = self._call_started
            if started is not None and time.monotonic() - started > self._max_batch_s and not self._aborting.is_set():
                # A stuck call never returns: no grace period can end it, and only a new process can
                # use the device again. Every held message goes back to the queue for the other workers.
                self._fail(WorkerError(f"a model call has not returned after {self._max_batch_s:.0f} s (a hung GPU "
                                       "or driver?): giving every held message back and exiting"))
                self.abort()
            if self._aborting.is_set():
                log.warning("aborting: releasing %d held message(s)", len(self._lease))
                self._release_all()
                return EXIT_FAILED
            if self._stopping.is_set():
                if stop_seen_at is None:
                    stop_seen_at = time.monotonic()
                    waiting = prefetcher.waiting
                    prefetcher.stop()
                    log.info("stopping: finishing the work in hand; %d prefetched batch(es) given back once the "
                             "receive under way returns (%d message(s) held)", waiting, len(self._lease))
                if not len(self._lease):
                    # Idle (typically inside a long poll): nothing to finish, so do not wait for the poll.
                    return self._exit_code()
                if time.monotonic() - stop_seen_at > self._stop_grace_s:
                    log.warning("work in hand not finished %.0f s after the stop request: releasing it",
                                self._stop_grace_s)
                    self._release_all()
                    return self._exit_code()
            thread.join(_SUPERVISE_INTERVAL_S)
        if self._stopping.is_set() and stop_seen_at is None and not self._broken.is_set():
            log.info("stopping: stop requested between batches")
        # Idle, as in the loop above: nothing held to give back, so no poll to wait for. The compute thread
        # may have seen the stop before this loop did (it looks at it before its first take, too), and ended.
        if (self._stopping.is_set() and len(self._lease)
                and (not self._broken.is_set() or isinstance(self._crash, _NO_TILES_FAULT))):
            self._await_receive(prefetcher, deadline=(stop_seen_at or time.monotonic()) + self._stop_grace_s)
        self._release_all()
        return self._exit_code()

    def _await_receive(self, prefetcher: Prefetcher[TileWork], *, deadline: float) -> None:
        """Let the receive under way return, and the prefetcher give back what it holds, before the rest goes.

        Messages made visible while that long poll runs are taken straight back by it: one stop would
        cost each two of its few receives, and the next worker's first attempt could be its last.
        Bounded by the stop grace, and cut short by an abort; a poll made while messages are held is
        short (``HELD_WAIT_S``). So does a worker stopping on a fault of its deployment or of S3, whose
        messages the next worker should get with their receives intact; one stopping on a bug gives
        everything back at once.
        """
        prefetcher.stop()
        while not prefetcher.join(_SUPERVISE_INTERVAL_S):
            if self._aborting.is_set() or time.monotonic() >= deadline:
                log.warning("stopping: the receive under way has not returned; giving back the %d message(s) "
                            "held now", len(self._lease))
                return

    def _exit_code(self) -> int:
        if self._crash is None:
            return EXIT_OK
        self._release_all()
        log.error("worker %s stopped on an error: %s: %s", self.worker_id, type(self._crash).__name__, self._crash)
        return EXIT_FAILED

    def _fail(self, exc: BaseException) -> None:
        """Any stage's unexpected error: remember the first, and stop the worker as a stop request would.

        A transfer abandoned because its message was already given back (stop grace over, abort) is
        the end of that work, not an error of the worker: it must not change how the worker exits.
        """
        if isinstance(exc, TransferAbandoned):
            log.info("worker %s: %s", self.worker_id, exc)
            return
        with self._crash_lock:
            if self._crash is None:
                self._crash = exc
                if isinstance(exc, _NO_TILES_FAULT):
                    log.error("worker %s: %s; giving every held message back and exiting", self.worker_id, exc)
                else:
                    log.error("worker %s: unexpected error in %s", self.worker_id, threading.current_thread().name,
                              exc_info=exc)
        self._broken.set()
        self._stopping.set()

    def _release_all(self) -> None:
        self._abandoned.set()
        self._release(self._lease.handles(), 0)

    # -- prefetch stage: receiving (am-receive thread) -----------------------------------

    def _receive(self) -> list[TileWork] | None:
        """The next batch of valid tile messages, or None when idle for ``idle_exit_s`` or stopping."""
        while not self._stopping.is_set():
            idle_left = self._idle_exit_s - self._idle_s
            if idle_left <= 0:
                # Messages another worker holds come back if it dies, at their visibility timeout; a
                # worker leaving before then could leave them to no one, so it waits that long at most.
                patience_left = idle_left + self._visibility_s
                held = self._held_elsewhere() if patience_left > 0 else 0
                if not held:
                    log.info("no messages for %.0f s: exiting", self._idle_s if self._waiting_for_held
                             else self._idle_exit_s)
                    return None
                if not self._waiting_for_held:
                    self._waiting_for_held = True
                    log.info("no messages for %.0f s, but %d are held by other workers: waiting up to %d s "
                             "more, in case theirs died", self._idle_exit_s, held, self._visibility_s)
                idle_left = patience_left
            started, busy = time.monotonic(), len(self._lease) > 0
            wait_s = min(MAX_WAIT_S, max(1, math.ceil(idle_left)))
            work = self._receive_batch(wait_s=min(wait_s, HELD_WAIT_S) if busy else wait_s)
            if not work:
                # Idle means nothing to do, and a rejected message is nothing to do: on a queue that
                # never dead-letters it, it must not keep the worker from leaving. While earlier
                # batches were in hand (their retries may still come back), the clock does not run.
                busy = busy or len(self._lease) > 0
                self._idle_s = 0.0 if busy else self._idle_s + time.monotonic() - started
                continue
            self._idle_s = 0.0
            self._waiting_for_held = False
            # Received after a stop request, it is not "in hand": the prefetcher gives it back with the
            # batches it holds, in one call, now that no receive is under way.
            return work
        return None

    def _held_elsewhere(self) -> int:
        """Messages of the tile queue in flight and not held by this worker (SQS's approximate count)."""
        return max(0, self._queue.depth()["in_flight"] - len(self._lease))

    def _receive_batch(self, *, wait_s: int) -> list[TileWork]:
        """Messages carrying about batch_size tiles: one long poll, then short polls while they keep coming.

        Returns the valid messages among those received (the others are rejected).
        How many messages to ask for comes from the tiles per message of the last receive (at
        first one message), so a worker holds about one batch of tiles, not ``batch_size``
        messages of many tiles each that another worker could have taken.
        """
        received: list[Received] = []
        work: list[TileWork] = []
        tiles = 0
        while tiles < self._batch_size and not self._stopping.is_set():
            wanted = max(1, math.ceil((self._batch_size - tiles) / self._tiles_per_message))
            started = time.perf_counter()
            got = self._queue.receive(max_messages=min(MAX_RECEIVE, wanted), wait_s=0 if received else wait_s,
                                      visibility_timeout=self._visibility_s)
            self._lease.add(got)
            if not got:
                break
            self.stats.clock.add("receive", time.perf_counter() - started)
            received.extend(got)
            for message in got:
                try:
                    item = TileWork(message, TileMessage.from_json(message.body))
                except MessageError as exc:
                    self._reject(message, exc)
                    continue
                work.append(item)
                tiles += item.count
            if work:
                self._tiles_per_message = max(t.count for t in work)
        return work

    def _reject(self, received: Received, exc: MessageError) -> None:
        """A message we must not act on: log it, touch none of its keys, hide it for a failed tile's backoff.

        SQS moves a message to the dead-letter queue only when it is received once more after
        ``maxReceiveCount`` receives, and a queue without a redrive policy never does. Made
        visible at once, a rejected message would come straight back to the next receive, in a
        busy loop of receives and error lines that, without a dead-letter queue, never ends.
        Hidden like a failed tile, it reaches the dead-letter queue after the same receives, and
        elsewhere costs one receive per backoff.
        """
        log.error("rejected message %s (receive %d): %s", received.message_id, received.receive_count, exc)
        self.stats.rejected += 1
        self._release([received.receipt_handle], self._backoff_s(received.receive_count))

    def _give_back(self, tiles: list[TileWork]) -> None:
        """Prefetched tiles the model will not get to (stopping): visible again at once, for another worker.

        Only those still held: a message already released (grace over, abort) may be another worker's by now.
        """
        held = set(self._lease.handles())
        self._release([t.received.receipt_handle for t in tiles if t.received.receipt_handle in held], 0)

    # -- compute stage (am-compute thread) -----------------------------------------------

    def _compute(self, prefetcher: Prefetcher[TileWork], uploader: Uploader[TileWork], steps: TileSteps) -> None:
        try:
            while not self._stopping.is_set():
                tiles = prefetcher.take()
                if tiles is None:
                    break
                self._call_started = time.monotonic()
                try:
                    steps.infer(tiles)
                finally:
                    self._call_started = None
                if not uploader.submit(tiles):
                    break
        except BaseException as exc:
            self._fail(exc)
        finally:
            prefetcher.stop()
            uploader.close()
        uploader.join()

    def _model_call_returned(self) -> None:
        """Restart the supervisor's watch: it times one model call, which a healthy device finishes in
        time, not the whole batch, which may be many calls."""
        self._call_started = time.monotonic()

    # -- upload stage: settling (am-settle thread), after every tile's mask is written ----

    def _settle(self, tiles: list[TileWork]) -> None:
        for tile in tiles:
            if not tile.ok:
                log.warning("tile(s) %s of job %s failed (attempt %d): %s", tile.message.name, tile.message.job,
                            tile.received.receive_count, tile.error)
        dead_lettered = self._dead_letter_last_failures(tiles)
        with self.stats.clock.timing("report"):
            unreported, dropped = self._report(tiles)
        done = [t.received.receipt_handle for t in tiles if t.ok and t.received.receipt_handle not in unreported]
        retry = [t for t in tiles if not (t.ok and t.received.receipt_handle not in unreported)
                 and t.received.receipt_handle not in dead_lettered]
        failed = sum(t.count for t in tiles if not t.ok)
        finished = set(done)
        done_tiles = sum(t.count for t in tiles if t.received.receipt_handle in finished)
        self.stats.done += done_tiles
        if done:
            self.stats.last_done = time.monotonic()
        self.stats.failed += failed
        self.stats.batches += 1
        log.info("batch of %d message(s): %d tile(s) done, %d failed", len(tiles), done_tiles, failed)
        with self.stats.clock.timing("delete"):
            self._delete(done + dropped)
        self._back_off([t for t in retry if t.received.receipt_handle not in dropped])

    def _dead_letter_last_failures(self, tiles: list[TileWork]) -> set[str]:
        """Move the messages that failed on their last receive to the dead-letter queue; returns their handles.

        Sent there first, then deleted here: a failure between the two leaves a second copy in
        the dead-letter queue (the job counts its tiles once), never none. Where the send fails,
        the message is hidden as any failure is, and SQS moves it at its next receive. A message
        of a job that has ended (its results queue is gone) is left out: nobody would ever take it
        out of the dead-letter queue, and its report finds the queue gone and deletes it, as on any
        earlier receive.
        """
        if self._dead_letters is None or self._max_receives < 1:
            return set()
        last = [t for t in tiles if not t.ok and t.received.receive_count >= self._max_receives]
        if not last:
            return set()
        ended = {reply for reply in {t.message.reply for t in last} if self._job_ended(reply)}
        last = [t for t in last if t.message.reply not in ended]
        if not last:
            return set()
        try:
            self._dead_letters.send_many([t.received.body for t in last])
        except TransportError as exc:
            log.warning("could not move %d message(s) that failed their last attempt to the dead-letter queue, "
                        "SQS will at their next receive: %s", len(last), exc)
            return set()
        handles = [t.received.receipt_handle for t in last]
        log.warning("tile(s) %s failed their last attempt (receive %d of %d): moved to the dead-letter queue",
                    ", ".join(t.message.name for t in last), last[0].received.receive_count, self._max_receives)
        self._delete(handles)
        return set(handles)

    def _job_ended(self, reply: str) -> bool:
        """Whether the results queue ``reply`` no longer exists (its job has ended).

        Asked only before a last failure is dead-lettered, when that must be known before the
        report that would otherwise tell. Where SQS cannot say, the job is taken as running: a
        message in the dead-letter queue is one the job can still count, or ``--drop-orphans``
        removes.
        """
        try:
            self._sender(reply).depth()
        except TransportError as exc:
            if is_missing_queue(exc):
                return True
            log.warning("could not tell whether results queue %s still exists, taking its job as running: %s",
                        reply, exc)
        return False

    def _report(self, tiles: list[TileWork]) -> tuple[set[str], list[str]]:
        """Send a TileResult per message to its job's results queue.

        Returns the receipt handles that could not be reported (to retry later) and those of
        jobs whose results queue is gone (nobody waits for them: delete).
        """
        by_reply: dict[str, list[TileWork]] = defaultdict(list)
        for tile in tiles:
            by_reply[tile.message.reply].append(tile)
        unreported: set[str] = set()
        dropped: list[str] = []
        for reply, group in by_reply.items():
            bodies = [self._result(tile).to_json() for tile in group]
            handles = [t.received.receipt_handle for t in group]
            try:
                self._sender(reply).send_many(bodies)
            except TransportError as exc:
                if is_missing_queue(exc):
                    log.warning("results queue %s no longer exists: dropping %d message(s) of job %s", reply,
                                len(group), group[0].message.job)
                    dropped.extend(handles)
                else:
                    log.error("could not report %d tile(s) to %s, they will be retried: %s", len(group), reply, exc)
                unreported.update(handles)
        return unreported, dropped

    def _result(self, tile: TileWork) -> TileResult:
        m = tile.message
        return TileResult(job=m.job, group=m.group, tiles=m.tiles, status=RESULT_DONE if tile.ok else RESULT_FAILED,
                          attempt=tile.received.receive_count, worker=self.worker_id, error=tile.error,
                          compute_s=tile.compute_s)

    def _sender(self, reply: str) -> ResultSender:
        if reply not in self._senders:
            self._senders[reply] = self._results(reply)
        return self._senders[reply]

    def _back_off(self, tiles: list[TileWork]) -> None:
        """Hide failed (or unreported) tiles for a while, growing with the attempt, so the DLQ takes persistent ones."""
        by_delay: dict[int, list[str]] = defaultdict(list)
        for tile in tiles:
            by_delay[self._backoff_s(tile.received.receive_count)].append(tile.received.receipt_handle)
        for delay, handles in by_delay.items():
            self._release(handles, delay)

    def _backoff_s(self, receive_count: int) -> int:
        """How long a message that was not done stays hidden after its ``receive_count``-th receive."""
        return min(2**receive_count, self._max_backoff_s)

    # Settling holds the lease lock through the SQS call: the heartbeat cannot re-hide a message
    # being released, and the supervisor sees the lease empty only once the call is through.

    def _delete(self, handles: list[str]) -> None:
        if not handles:
            return
        with self._lease.lock:
            self._lease.remove(handles)
            try:
                self._queue.delete_many(handles)
            except TransportError as exc:
                # Masks and reports are out; a message that comes back is done again, identically.
                log.warning("could not delete %d finished message(s), they may run again: %s", len(handles), exc)

    def _release(self, handles: list[str], seconds: int) -> None:
        if not handles:
            return
        if seconds == 0 and self._stopping.is_set():
            self._gave_back_on_stop = True
        with self._lease.lock:
            self._lease.remove(handles)
            try:
                self._queue.change_visibility_many(handles, seconds)
            except TransportError as exc:
                # Not fatal: the message reappears anyway when its visibility timeout ends.
                log.warning("could not release %d message(s): %s", len(handles), exc)


__all__ = ["EXIT_FAILED", "EXIT_OK", "MAX_BACKOFF_S", "ResultSender", "Worker", "WorkerStats"]
