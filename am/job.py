"""One segmentation job through a backend: upload tiles, enqueue, track, collect masks.

The job owns its S3 prefix ``<job_id>/`` in both buckets and its results queue; all of them
are removed when the job ends, also on failure or Ctrl-C. Masks are written into the dataset
as they arrive, so finished tiles survive a failed or interrupted job.

Tiles may be sent while they are still being cut: the workers start first, each chunk of
tiles is uploaded and enqueued on a sender thread while the caller cuts the next one, and
reports already waiting are collected between chunks. The job finishes only once it is sealed
(every tile sent) and no tile is pending::

    with open_job(backend, layout=layout, settings=settings, job_id=new_job_id(), workers=2) as job:
        for chunk in tiler.chunks():
            job.send(chunk.group, chunk.tiles)     # (index, uint8 array or PNG file) pairs
        job.seal()
        job.wait()
    report = raise_for_lost_tiles(job.report())

``run_job`` does the same for groups whose tiles are all on disk already.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from types import FrameType

import numpy as np
from tqdm import tqdm

from am.backends import Backend
from am.dataset import DatasetLayout
from am.errors import (
    AmError,
    CleanupIncomplete,
    InputError,
    JobFailed,
    JobTimeout,
    LauncherError,
    MessageError,
    describe_fault,
)
from am.files import write_atomic
from am.imageio import encode_png, read_image
from am.messages import (
    MESSAGE_VERSION,
    RESULT_DONE,
    RESULT_FAILED,
    TileMessage,
    TileResult,
    check_group,
    check_tiles,
    tile_name,
    tiles_key,
)
from am.prepare import PreparedGroup
from am.settings import Settings
from am.tilepack import pack_tiles, unpack_masks
from am.tracking import JobTracker
from am.transport.queue import Queue, Received, create_results_queue, delete_queue
from am.transport.retry import DEFAULT_POLICY, RetryPolicy
from am.transport.storage import Storage

log = logging.getLogger(__name__)

RESULT_WAIT_S = 2
# A report received is hidden this long, not the queue's default 30 s: when an interrupt cuts a
# receive short, the endpoint may still hand it reports that the orchestrator never reads, and they
# must be visible again soon enough for the collection after the interrupt (Job.collect_reported).
# The collector alone receives from the queue, one receive at a time, so a report handled for longer
# than this is still deleted by its handle before anything can receive it again.
RESULT_HOLD_S = 3
# Dead letters read in one scan stay hidden this long, so a scan reads each once; each scan makes
# them visible again when it ends, and a scan cut short leaves them hidden no longer than this.
DEAD_LETTER_HOLD_S = 30
# Most dead letters one scan reads. The dead-letter queue is shared by every job of a deployment and
# keeps messages for 14 days, so this job's may sit behind many of other jobs; a scan reads the whole
# queue up to this many (50 receives, a second or two), not just until a batch without this job's.
DEAD_LETTER_SCAN_MAX = 500
HEALTH_CHECK_EVERY_S = 5.0
# Clean-up after a failure: a couple of quick tries, so a dead endpoint does not hold up the error.
CLEANUP_RETRY_AFTER_FAILURE = RetryPolicy(attempts=2, base_s=0.2, max_wait_s=1.0)
# Tiles sent but not yet collected, per local worker, when max_tiles_in_flight is 0. The embedded
# endpoint scans a whole queue on every receive, so a queue holding thousands of tiles slows every
# worker and the collector alike (a 30000 x 30000 image has about 6000 tiles: 0.4 s per receive);
# a window of a few batches per worker keeps the workers fed and both queues short. SQS has no
# such cost, and a window would only cap what many ECS tasks can take, so AWS gets none.
IN_FLIGHT_PER_LOCAL_WORKER = 64
ROOM_WAIT_S = 1
# Tiles per message and object when tiles_per_message is 0. Locally, every request costs the
# embedded endpoint CPU that the workers' models need (8 tiles: 1/8 of the requests, and still
# several messages per worker to share out); on AWS a GPU batch of 64 takes two messages.
TILES_PER_MESSAGE_LOCAL = 8
TILES_PER_MESSAGE_AWS = 32
# After Ctrl-C or SIGTERM the workers finish the batch in hand and report it as they stop. Reports
# already on the results queue then are collected for at most this long before the job's data is
# deleted, so a rerun reuses those masks instead of segmenting the tiles again; nothing new is awaited.
FINAL_COLLECT_S = 5.0
FINAL_RECEIVE_WAIT_S = 1
# About how long a clean-up takes at most, for the message shown when Ctrl-C comes during it: local
# workers get 20 s to finish their batch, then the reported masks are collected.
CLEANUP_HINT_S = 30.0


def new_job_id() -> str:
    """Sortable by start time, unique enough for concurrent jobs on one deployment."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class JobReport:
    job_id: str
    tiles: int
    completed: int
    duplicates: int
    compute_s: float
    seconds: dict[str, float] = field(default_factory=dict)
    dead: dict[str, str] = field(default_factory=dict)


def _message(job_id: str, group: str, tiles: tuple[int, ...], key: str, *, model: str, tta: str,
             reply: str) -> str:
    return TileMessage(job=job_id, group=group, tiles=tiles, input=key, output=key, model=model,
                       reply=reply, tta=tta).to_json()


def tile_pixels(tile: np.ndarray | Path, *, size: int) -> np.ndarray:
    """A tile's uint8 pixels: the array itself, or the tile file a rerun finds on disk.

    A tile file that cannot be used (damaged, or not what the plan says) stops the job with
    the file named: it is the orchestrator's own intermediate file, so the fix is to cut the
    group again, not to send workers something they can only fail on.
    """
    if isinstance(tile, Path):
        where, fix = f"tile file {tile}", f"; delete {tile.parent.parent} so that the next run cuts the group again"
        try:
            pixels = read_image(tile)
        except InputError as exc:
            raise InputError(f"{where} cannot be read ({describe_fault(exc)}){fix}") from exc
    else:
        where, fix, pixels = "a tile", "", np.asarray(tile)
    if pixels.dtype != np.uint8 or pixels.shape != (size, size):
        raise InputError(f"{where} is {pixels.dtype} of shape {pixels.shape}, not an 8-bit grey "
                         f"{size}x{size} tile{fix}")
    return pixels


def tiles_per_message(settings: Settings, *, backend: str) -> int:
    """Tiles one message and one object carry: the setting, or the backend's default."""
    if settings.tiles_per_message:
        return settings.tiles_per_message
    return TILES_PER_MESSAGE_LOCAL if backend == "local" else TILES_PER_MESSAGE_AWS


class _Collector:
    """Turns worker reports into local mask files and tracker state."""

    def __init__(self, *, job_id: str, tracker: JobTracker, storage: Storage, bucket: str,
                 layout: DatasetLayout, tile_size: int, on_done: Callable[[int], object],
                 worker_logs: Path | None = None) -> None:
        self.job_id = job_id
        self.tracker = tracker
        self.storage = storage
        self.bucket = bucket
        self.layout = layout
        self.tile_size = tile_size
        self.on_done = on_done
        # Where local workers write their logs (None: elsewhere, such as CloudWatch), to find why one
        # rejected a message: a rejected message is never reported, only logged.
        self.worker_logs = worker_logs
        self._warned_full_scan = False
        # Bodies of the receive being handled: an interrupt while handling them must not lose them,
        # since their messages stay hidden on the results queue (see Job.collect_reported).
        self.in_hand: list[str] = []
        # Until when reports taken by a receive that an interrupt cut short stay hidden; 0: none was.
        self.hidden_until = 0.0

    def handle_results(self, bodies: list[str]) -> None:
        done: list[TileResult] = []
        for body in bodies:
            try:
                result = TileResult.from_json(body)
            except MessageError as exc:
                if not self._handle_other_version(body):
                    log.warning("ignoring a malformed report on the results queue: %s", exc)
                continue
            if result.job != self.job_id:
                log.warning("ignoring a report for job %s on the queue of job %s", result.job, self.job_id)
                continue
            if result.status == RESULT_DONE:
                if any(self.tracker.accepts(name) for name in result.names):
                    done.append(result)
                else:
                    for name in result.names:
                        self.tracker.done(name)  # counts the duplicate
            else:
                for name in result.names:
                    self.tracker.failed(name, attempt=result.attempt, error=result.error)
        if done:
            self._collect(done)

    def _handle_other_version(self, body: str) -> bool:
        """A report of this job from a worker of another release (another message version); False if it is not one.

        Such a worker cannot write a report this build reads in full, but the fields that say
        which tiles failed and why are the same in every version: its failure, the reason a
        message was rejected among them, reaches the summary instead of a bare "dead-letter queue".
        Its ``done`` is not trusted (its masks may be in another format): the tiles are given up.
        """
        try:
            data = json.loads(body)
        except ValueError:
            return False
        if not isinstance(data, dict) or data.get("v") == MESSAGE_VERSION or data.get("job") != self.job_id:
            return False
        try:
            group, tiles = check_group(data.get("group")), check_tiles(data.get("tiles"), "tile result")
        except MessageError:
            return False
        status, error, attempt = data.get("status"), data.get("error"), data.get("attempt")
        if status not in (RESULT_DONE, RESULT_FAILED) or isinstance(attempt, bool) or not isinstance(attempt, int):
            return False
        release = (f"reported by a worker that writes message version {data.get('v')!r}, while this orchestrator "
                   f"writes version {MESSAGE_VERSION}: run the workers and the orchestrator from the same release")
        for name in (tile_name(group, tile) for tile in tiles):
            if status == RESULT_FAILED:
                self.tracker.failed(name, attempt=attempt, error=f"{str(error or 'no reason given')[:500]} ({release})")
            else:
                self.tracker.give_up(name, f"{release}; its masks are not read")
        return True

    def _collect(self, results: list[TileResult]) -> None:
        keys = [tiles_key(self.job_id, r.group, r.tiles) for r in results]
        blobs = self.storage.get_many(self.bucket, keys)
        for result, key in zip(results, keys, strict=True):
            try:
                masks = unpack_masks(blobs[key], count=len(result.tiles), size=self.tile_size,
                                     name=f"s3://{self.bucket}/{key}")
            except InputError as exc:
                for name in result.names:
                    self.tracker.give_up(name, f"worker wrote unusable masks: {exc}")
                continue
            share = result.compute_s / len(result.tiles)
            done = 0
            for tile, name, mask in zip(result.tiles, result.names, masks, strict=True):
                if not self.tracker.accepts(name):
                    self.tracker.done(name)  # counts the duplicate; the mask on disk is the same
                    continue
                data = encode_png(mask, compression=1, row_filter="none")
                write_atomic(self.layout.tile_mask(result.group, tile), data)
                done += self.tracker.done(name, compute_s=share)
            if done:
                self.on_done(done)

    def handle_dead_letters(self, queue: Queue) -> None:
        """Give up on this job's tiles whose messages reached the dead-letter queue, and leave the messages there.

        They stay for ``am.scale redrive``: moved back once the cause is fixed, such a tile still
        completes if its report comes while the job runs (see :meth:`JobTracker.accepts`). Each
        message read is held for the scan, so none is read twice, and made visible again after it;
        the job deletes its own when it ends (:meth:`delete_dead_letters`). The scan reads the
        whole queue (up to ``DEAD_LETTER_SCAN_MAX``): it may hold many of other jobs.
        """
        received = self._scan(queue)
        try:
            for message in received:
                tile = _tile_message(message.body)
                if tile is None or tile.job != self.job_id:
                    continue
                pending = [name for name in tile.names if self.tracker.is_pending(name)]
                if not pending:
                    continue
                # The message's own receive count is no guide here: reading the DLQ adds to it.
                reason = (f"moved to the dead-letter queue after {self.tracker.max_attempts} receives without "
                          "success")
                if not any(self.tracker.last_error(name) for name in pending):
                    reason += f" ({self._rejection(message.message_id)})"
                for name in pending:
                    self.tracker.give_up(name, reason)
        finally:
            if received:
                queue.change_visibility_many([m.receipt_handle for m in received], 0)

    def delete_dead_letters(self, queue: Queue) -> int:
        """At the job's end: delete its messages from the dead-letter queue; returns how many.

        Nothing would collect a re-driven tile any more, and a rerun sends the tile again. Other
        jobs' messages are made visible again; like :meth:`handle_dead_letters`, this reads the
        whole queue, up to ``DEAD_LETTER_SCAN_MAX`` messages.
        """
        received = self._scan(queue)
        mine, others = [], []
        for message in received:
            tile = _tile_message(message.body)
            (mine if tile is not None and tile.job == self.job_id else others).append(message.receipt_handle)
        try:
            if mine:
                queue.delete_many(mine)
        finally:
            if others:
                queue.change_visibility_many(others, 0)
        if mine:
            log.info("job %s: deleted its %d message(s) from the dead-letter queue", self.job_id, len(mine))
        return len(mine)

    def _scan(self, queue: Queue) -> list[Received]:
        """Every message of the dead-letter queue, up to ``DEAD_LETTER_SCAN_MAX``, each held for the scan.

        Stops when a receive brings nothing new. The caller makes them visible again (or deletes
        them); if a receive fails, those already read are released here before the error goes on.
        """
        seen: dict[str, Received] = {}
        try:
            while len(seen) < DEAD_LETTER_SCAN_MAX:
                wanted = min(10, DEAD_LETTER_SCAN_MAX - len(seen))
                new = [m for m in queue.receive(max_messages=wanted, wait_s=0, visibility_timeout=DEAD_LETTER_HOLD_S)
                       if m.message_id not in seen]
                if not new:
                    break
                seen.update((m.message_id, m) for m in new)
        except BaseException:
            if seen:
                queue.change_visibility_many([m.receipt_handle for m in seen.values()], 0)
            raise
        if len(seen) >= DEAD_LETTER_SCAN_MAX and not self._warned_full_scan:
            self._warned_full_scan = True
            log.warning("the dead-letter queue %s holds %d messages or more, as many as one scan reads: this job's "
                        "failed tiles may be noticed late; remove the dead letters of ended jobs "
                        "(python -m am.scale redrive --drop-orphans) or purge the queue", queue.name,
                        DEAD_LETTER_SCAN_MAX)
        return list(seen.values())

    def _rejection(self, message_id: str) -> str:
        """Why a dead letter no worker reported a failure for never ran, as far as can be told here.

        A worker that rejects a message (it does not parse, or comes from another release) only
        logs why, with the message id (``rejected message <id> (receive n): why``): the local
        workers' logs are read for it. Elsewhere the text says what to search the logs for.
        """
        marker = f"rejected message {message_id} "
        if self.worker_logs is not None and self.worker_logs.is_dir():
            for path in sorted(self.worker_logs.glob("*.log")):
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")
                except OSError as exc:
                    log.debug("cannot read worker log %s: %s", path, exc)
                    continue
                for line in reversed(text.splitlines()):
                    found = line.find(marker)
                    if found >= 0:
                        why = _REJECT_REASON.sub("", line[found + len(marker):], count=1)
                        return f"a worker rejected its message: {why.strip()[:500]} (worker log {path})"
            where = f"the worker logs in {self.worker_logs}"
        else:
            where = "the worker logs (CloudWatch for ECS workers)"
        return (f"no worker reported a failure for it: a worker rejected its message (one from another release, "
                f"say) or stopped while it held it; search {where} for 'rejected message {message_id}'")


# What follows the message id in a worker's "rejected message <id> (receive n): <reason>" line.
_REJECT_REASON = re.compile(r"^\(receive \d+\):\s*")


def _tile_message(body: str) -> TileMessage | None:
    """A dead letter's tile message, or None for one that is not (left to the operator and ``am.scale``)."""
    try:
        return TileMessage.from_json(body)
    except MessageError:
        return None


def _collect_reports(collector: _Collector, results: Queue, *, wait_s: int) -> bool:
    """One receive on the results queue: handle what came, then delete it; False when nothing came."""
    collector.hidden_until = time.monotonic() + wait_s + RESULT_HOLD_S
    received = results.receive(max_messages=10, wait_s=wait_s, visibility_timeout=RESULT_HOLD_S)
    collector.hidden_until = 0.0
    if received:
        collector.in_hand = [m.body for m in received]
        collector.handle_results(collector.in_hand)
        collector.in_hand = []
        results.delete_many([m.receipt_handle for m in received])
    return bool(received)


def _drain_results(collector: _Collector, results: Queue, *, wait_s: int = RESULT_WAIT_S) -> None:
    """Collect every report waiting on the results queue, until a receive of ``wait_s`` comes back empty."""
    while _collect_reports(collector, results, wait_s=wait_s):
        pass


def _check_workers(backend: Backend, collector: _Collector, *, results: Queue, dead_letters: Queue,
                   revive: Callable[[], bool] | None = None) -> None:
    """The periodic check: give up dead-lettered tiles, and fail if no worker is left while tiles are pending.

    ``revive`` may start workers again instead (see :meth:`Job.revive_idle_workers`); it returns
    True when it did.
    """
    tracker = collector.tracker
    collector.handle_dead_letters(dead_letters)
    if tracker.finished or backend.launcher.alive() > 0:
        return
    if revive is not None and revive():
        return
    # Workers leave when the tile queue is empty, which can be long before their reports are all
    # collected (a big job on a busy machine): those reports still count.
    _drain_results(collector, results)
    collector.handle_dead_letters(dead_letters)
    if tracker.finished or backend.launcher.alive() > 0:
        return
    detail = ""
    tail = getattr(backend.launcher, "log_tail", None)
    if callable(tail):
        detail = "\nlast worker log lines:\n" + tail()
    still_cutting = "" if tracker.sealed else " (and more were still being cut)"
    codes = getattr(backend.launcher, "exit_codes", None)
    how = describe_exits(codes()) if callable(codes) else ""
    raise LauncherError(
        f"all workers stopped while {len(tracker.pending)} tile(s) were pending{still_cutting}"
        f"{'; ' + how if how else ''}; finished tiles are kept, rerun the same command to resume{detail}"
    )


def describe_exits(codes: Sequence[int | None]) -> str:
    """How the workers that did not exit cleanly ended, by number: a log that just stops says nothing
    about a kill, so the code or signal is the only trace of it."""
    parts = []
    for number, code in enumerate(codes):
        if code is None or code == 0:
            continue
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            oom = " (the out-of-memory killer sends it)" if -code == signal.SIGKILL else ""
            parts.append(f"worker {number} was killed by {name}{oom}")
        else:
            parts.append(f"worker {number} exited with {code}")
    return ", ".join(parts)


def _wait_for_tiles(backend: Backend, collector: _Collector, *, results: Queue, dead_letters: Queue,
                    deadline: float) -> None:
    tracker = collector.tracker
    next_check = time.monotonic() + HEALTH_CHECK_EVERY_S
    while not tracker.finished:
        _collect_reports(collector, results, wait_s=RESULT_WAIT_S)
        now = time.monotonic()
        if now >= next_check and not tracker.finished:
            next_check = now + HEALTH_CHECK_EVERY_S
            _check_workers(backend, collector, results=results, dead_letters=dead_letters)
        if now > deadline:
            raise JobTimeout(
                f"job did not finish in time: {len(tracker.pending)} of {tracker.total} tile(s) pending; "
                "raise timeout_per_tile_s or add workers, then rerun to resume",
                {name: "timed out" for name in tracker.pending},
            )


@dataclass
class _CleanUpStep:
    """One step of a job's clean-up; ``left``: what stays behind until it succeeds (None: nothing lasting)."""

    what: str
    run: Callable[[], object]
    left: str | None


def _clean_up_steps(backend: Backend, *, job_id: str, results_url: str, settings: Settings, after_failure: bool,
                    dead_letters: Callable[[Queue], object] | None = None,
                    collect: Callable[[], object] | None = None) -> list[_CleanUpStep]:
    """Stop the workers, delete the job's results queue, its dead letters and its S3 prefixes, in that order.

    ``dead_letters`` deletes the job's messages from the dead-letter queue it is given; None
    when the job gave up on no tile, so it has none there to look for. ``collect``, when given,
    runs once the workers are stopped and before anything is deleted: after an interrupt it saves
    the masks reported meanwhile, which the deletion would otherwise throw away.

    After a failure (or Ctrl-C) a step gets few retries: when the endpoint is gone, waiting out
    the full policy for each step would only delay the error the user must read.
    """
    retry = CLEANUP_RETRY_AFTER_FAILURE if after_failure else DEFAULT_POLICY
    sqs = backend.clients.sqs()
    storage = Storage(backend.clients.s3(), threads=settings.transfer_threads, retry=retry)
    prefix = f"{job_id}/"
    # Local workers die with this process; ECS tasks run on until they leave idle.
    workers_left = None if backend.name == "local" else (
        f"ECS worker tasks, which leave after {settings.idle_exit_s:.0f} s without work "
        "(python -m am.scale drain stops them now)")
    steps = [_CleanUpStep("stop the workers", backend.launcher.stop, workers_left)]
    if collect is not None:
        steps.append(_CleanUpStep("collect the masks reported while the job was interrupted", collect,
                                  "masks reported but not yet collected (a rerun segments those tiles again)"))
    steps.append(_CleanUpStep(
        f"delete the results queue {results_url}", partial(delete_queue, sqs, results_url, retry=retry),
        f"the results queue {results_url} (aws sqs delete-queue --queue-url {results_url}; until it is gone, "
        "workers segment this job's tiles still on the tile queue for nobody)"))
    if dead_letters is not None:
        dlq = Queue(sqs, backend.dead_letter_queue_url, retry=retry)
        steps.append(_CleanUpStep(
            f"delete the job's messages from the dead-letter queue {dlq.name}", partial(dead_letters, dlq),
            f"this job's messages in the dead-letter queue {dlq.name} (python -m am.scale redrive --drop-orphans "
            "deletes them once the results queue is gone)"))
    if not settings.keep_job_data:
        for bucket in (backend.input_bucket, backend.output_bucket):
            steps.append(_CleanUpStep(
                f"delete s3://{bucket}/{prefix}", partial(storage.delete_prefix, bucket, prefix),
                f"the objects under s3://{bucket}/{prefix} (aws s3 rm --recursive s3://{bucket}/{prefix})"))
    return steps


def _clean_up(steps: list[_CleanUpStep], *, job_id: str, after_failure: bool, remaining: list[str]) -> None:
    """Run every step, even after one fails; ``remaining`` keeps what the steps not done (yet) leave behind.

    After a failure (or Ctrl-C) the error that ended the job is the one the user must read, so a
    clean-up step that fails is logged, not raised. After a success the first clean-up error is
    raised, since the job's data may have been left behind.
    """
    remaining[:] = [step.left for step in steps if step.left]
    errors: list[AmError] = []
    for step in steps:
        try:
            step.run()
        except AmError as exc:
            log.error("could not %s while ending job %s: %s", step.what, job_id, exc)
            errors.append(exc)
            continue
        if step.left:
            remaining.remove(step.left)
    if errors and not after_failure:
        raise errors[0]


class _ForcedQuit(BaseException):
    """Raised by :class:`_InterruptGuard` when the user insists on quitting a clean-up; ``Job.close`` turns it into
    CleanupIncomplete."""


class _InterruptGuard:
    """Ctrl-C and SIGTERM while a job is open: the first interrupts the job; the next cannot cut its clean-up short.

    An interrupt raised inside the clean-up skips every step after it: the job's results queue
    and S3 objects stay on the endpoint (on AWS nothing ever deletes them), and the masks reported
    while the workers stopped are lost. People press Ctrl-C again while workers take seconds to
    stop, and ``timeout -s INT`` delivers its signal twice. So once the job is interrupted, or its
    clean-up has begun, a signal only logs that the clean-up runs and how to force the way out;
    one more forces it (:class:`_ForcedQuit`), and ``Job.close`` says what was left behind.

    Installed in the main thread only, and only over Python-level handlers (the default Ctrl-C
    handler, the command line's SIGTERM one); any other disposition is left as it is.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.interrupted = False
        self.cleaning = False
        # Signals after the first interrupt, or during the clean-up.
        self.extra = 0
        self.forced = False
        self._previous: dict[int, Callable[[int, FrameType | None], object]] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            if callable(previous):
                self._previous[signum] = previous
                signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not (self.interrupted or self.cleaning):
            try:
                self._previous[signum](signum, frame)
            except BaseException:
                self.interrupted = True
                raise
            return
        if self.forced:
            return
        self.extra += 1
        if self.extra == 1:
            log.warning("job %s is cleaning up: stopping the workers, saving the masks they reported, deleting its "
                        "queue and objects; this takes up to about %.0f s. Press Ctrl-C again (or send SIGTERM again) "
                        "to quit at once and leave them behind", self.job_id, CLEANUP_HINT_S)
            return
        self.forced = True
        raise _ForcedQuit(f"signal {signum} during the clean-up of job {self.job_id}")


class Job:
    """A job that takes its tiles in chunks while its workers already run; open it with :func:`open_job`.

    Calls come from one thread: :meth:`send` for each chunk, then :meth:`seal` once every tile is
    sent, then :meth:`wait`. Uploads run on one sender thread, one chunk at a time, so at most
    one chunk waits in memory while the next is cut. ``seconds`` gathers where the job's time
    went: ``upload`` (sender thread, busy), ``collect`` (reports handled while sending, busy)
    and ``tail`` (from the seal until the last report).
    """

    def __init__(self, backend: Backend, *, results_url: str, layout: DatasetLayout, settings: Settings,
                 job_id: str, show_progress: bool = True, worker_logs: Path | None = None) -> None:
        self.job_id = job_id
        self.backend = backend
        self.results_url = results_url
        # The tile queue's own redrive policy, when the backend knows it, decides how often a tile is tried.
        self.tracker = JobTracker([], max_attempts=backend.max_receive_count or settings.max_receive_count,
                                  expect_more=True)
        self.seconds: dict[str, float] = {"upload": 0.0, "collect": 0.0}
        self._settings = settings
        self._workers = 0
        sqs = backend.clients.sqs()
        self._storage = Storage(backend.clients.s3(), threads=settings.transfer_threads)
        self._tile_queue = Queue(sqs, backend.queue_url)
        self._results = Queue(sqs, results_url)
        self._dead_letters = Queue(sqs, backend.dead_letter_queue_url)
        self._bar = tqdm(total=0, unit="tile", desc="segment", disable=not show_progress)
        self._collector = _Collector(job_id=job_id, tracker=self.tracker, storage=self._storage,
                                     bucket=backend.output_bucket, layout=layout, tile_size=settings.tile_size,
                                     on_done=self._bar.update, worker_logs=worker_logs)
        self._window = 0
        self._per_message = tiles_per_message(settings, backend=backend.name)
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="am-send")
        self._sending: Future[float] | None = None
        self._next_check = time.monotonic() + HEALTH_CHECK_EVERY_S
        self._guard = _InterruptGuard(job_id)

    def start_workers(self, count: int) -> None:
        """Start ``count`` workers; the count is kept so that workers which left idle can be replaced."""
        self._workers = count
        self._window = in_flight_window(self._settings, backend=self.backend.name, workers=count)
        self.backend.launcher.start(count, self.backend.worker_environment)

    def send(self, group: str, tiles: Sequence[tuple[int, np.ndarray | Path]]) -> None:
        """Upload ``(index, uint8 array or PNG file)`` tiles and enqueue them, on the sender thread.

        Tiles go out ``tiles_per_message`` to an object and a message (fewer in a chunk's last one).

        Waits for the previous chunk first (raising its error, if any), so one chunk travels while
        the caller cuts the next; then collects the reports already waiting. With a window of
        tiles in flight, the chunk goes out in pieces of half the window, each once there is room.
        """
        step = max(1, self._window // 2) if self._window else max(1, len(tiles))
        for start in range(0, len(tiles), step):
            piece = list(tiles[start:start + step])
            self._wait_for_room(len(piece))
            self._finish_sending()
            self.tracker.add(tile_name(group, index) for index, _ in piece)
            self._bar.total += len(piece)
            self._bar.refresh()
            self._sending = self._sender.submit(self._upload, group, piece)
            self.collect()

    def collect(self) -> None:
        """Handle every report already waiting, without waiting for more; check the workers when due."""
        started = time.monotonic()
        _drain_results(self._collector, self._results, wait_s=0)
        self.seconds["collect"] += time.monotonic() - started
        self._check_workers_when_due()

    def seal(self) -> None:
        """Every tile is sent: wait for the last chunk to be out; from now on the job can finish."""
        self._finish_sending()
        # Workers that left idle just before the last chunk must not be taken for crashed ones later.
        self.revive_idle_workers()
        self.tracker.seal()
        log.info("job %s: %d tile(s) on the %s backend", self.job_id, self.tracker.total, self.backend.name)

    def wait(self) -> None:
        """Collect reports until every tile is done or given up; raises on timeout or when no worker is left."""
        if not self.tracker.sealed:
            raise RuntimeError("seal() the job before waiting for it: more tiles could still come")
        started = time.monotonic()
        deadline = started + self._settings.job_timeout_s(self.tracker.total)
        _wait_for_tiles(self.backend, self._collector, results=self._results, dead_letters=self._dead_letters,
                        deadline=deadline)
        self.seconds["tail"] = time.monotonic() - started

    def report(self) -> JobReport:
        t = self.tracker
        return JobReport(self.job_id, t.total, len(t.completed), t.duplicates, t.compute_s, dict(self.seconds), t.dead)

    def revive_idle_workers(self) -> bool:
        """Start the workers again if every one of them left idle while tiles were still being cut.

        Workers leave after ``idle_exit_s`` without work. Started before the first tile is cut,
        they may run out of patience on a slow preparation (a huge image, or the next group's
        normalisation) through no fault of their own. Only a launcher that reports exit codes can
        tell that from a crash: local processes, and ECS tasks (whose worker exited by itself; a
        task someone stopped has no code). A crash, or a stop, is never retried here.
        """
        codes = getattr(self.backend.launcher, "exit_codes", None)
        if self.tracker.sealed or not callable(codes) or self.backend.launcher.alive() > 0:
            return False
        exits = codes()
        if not exits or any(code != 0 for code in exits):
            return False
        log.warning("every worker left idle (idle_exit_s %.0f s) while tiles were still being cut; starting %d again",
                    self._settings.idle_exit_s, self._workers)
        self.start_workers(self._workers)
        return True

    def close(self, *, after_failure: bool, interrupted: bool = False) -> None:
        """Stop sending, stop the workers, delete the job's results queue and S3 prefixes (see ``_clean_up_steps``).

        After an interrupt (Ctrl-C or SIGTERM) the masks reported by then, the stopping workers'
        last batches included, are collected between the stop and the deletion (:meth:`collect_reported`).
        A signal during the clean-up does not cut it short (see :class:`_InterruptGuard`); after a
        clean-up that followed a success it is raised as KeyboardInterrupt once the clean-up is done.
        One more signal quits at once: CleanupIncomplete then names what was left behind.
        """
        guard = self._guard
        guard.cleaning = True
        steps = _clean_up_steps(self.backend, job_id=self.job_id, results_url=self.results_url,
                                settings=self._settings, after_failure=after_failure,
                                dead_letters=self._collector.delete_dead_letters if self.tracker.dead else None,
                                collect=self.collect_reported if interrupted else None)
        remaining = [step.left for step in steps if step.left]
        try:
            if guard.forced:
                raise _ForcedQuit("forced before the clean-up began")
            # An upload still running must finish before the prefixes go, or it would leave objects behind.
            self._sender.shutdown(wait=True, cancel_futures=True)
            self._bar.close()
            _clean_up(steps, job_id=self.job_id, after_failure=after_failure, remaining=remaining)
        except _ForcedQuit:
            self._kill_workers()
            raise CleanupIncomplete(self._left_behind(remaining)) from None
        finally:
            guard.cleaning = False
        if guard.extra and not after_failure:
            raise KeyboardInterrupt("signal during the clean-up")

    def _kill_workers(self) -> None:
        """Quitting at once: workers that have a quick way out (local ones) take it, so nothing waits for them."""
        kill = getattr(self.backend.launcher, "kill", None)
        if kill is not None:
            kill()

    def _left_behind(self, remaining: list[str]) -> str:
        """The message of a clean-up the user cut short: what it did not do, and how to do it by hand."""
        head = f"interrupted again while job {self.job_id} was cleaning up, so it quit without finishing"
        kept = "masks already written to the dataset are kept; rerun the same command to resume"
        if self.backend.name == "local" and not self._settings.endpoint_url:
            return (f"{head}; its queue and objects were on the embedded endpoint, which ends with this command, and "
                    f"the local workers were stopped; {kept}")
        if not remaining:
            return f"{head}, but nothing was left behind; {kept}"
        endpoint = (f" (add --endpoint-url {self._settings.endpoint_url} to the aws commands)"
                    if self._settings.endpoint_url else "")
        return f"{head}; left behind{endpoint}: " + "; ".join(remaining) + f"; {kept}"

    def collect_reported(self, *, budget_s: float = FINAL_COLLECT_S) -> int:
        """Write the masks already reported done to the dataset, for at most ``budget_s``; returns how many.

        Runs after an interrupt, once the workers are stopped and before the job's objects and
        results queue are deleted: without it, the masks of every report not yet collected (the
        stopping workers' last batches among them) would be deleted with the job, and the rerun
        would segment those tiles again. It collects exactly as :meth:`wait` does, but with the
        quick retries of a clean-up and only what is already reported: the first empty receive
        ends it, unless the interrupt cut a receive short: the reports that receive may have taken
        unseen are awaited until they are visible again (``RESULT_HOLD_S``), within the budget.
        A signal meanwhile does not end it (see :class:`_InterruptGuard`); should an interrupt come
        all the same (the guard works in the main thread only), it ends the collection, and the
        clean-up goes on, as does the first interrupt, which is what the caller raises.
        """
        sqs, s3 = self.backend.clients.sqs(), self.backend.clients.s3()
        before = len(self.tracker.completed)
        collector = _Collector(job_id=self.job_id, tracker=self.tracker, bucket=self.backend.output_bucket,
                               storage=Storage(s3, threads=self._settings.transfer_threads,
                                               retry=CLEANUP_RETRY_AFTER_FAILURE),
                               layout=self._collector.layout, tile_size=self._settings.tile_size,
                               on_done=lambda _count: None)
        results = Queue(sqs, self.results_url, retry=CLEANUP_RETRY_AFTER_FAILURE)
        deadline = time.monotonic() + budget_s
        try:
            if self._collector.in_hand:
                collector.handle_results(self._collector.in_hand)
            hidden_until = self._collector.hidden_until
            while self.tracker.pending_count and time.monotonic() < deadline:
                if not _collect_reports(collector, results, wait_s=FINAL_RECEIVE_WAIT_S) \
                        and time.monotonic() >= hidden_until:
                    break
        except OSError as exc:
            # The interrupt is the error to report; a mask that cannot be written is only named here.
            log.error("job %s: could not write the masks reported while the job was interrupted: %s",
                      self.job_id, exc)
        except KeyboardInterrupt:
            log.warning("job %s: interrupted again; the masks reported but not yet collected are lost, "
                        "a rerun segments those tiles again", self.job_id)
        collected = len(self.tracker.completed) - before
        if self.tracker.pending_count and time.monotonic() >= deadline:
            log.warning("job %s: stopped collecting after %.0f s, perhaps with reports still waiting; a rerun "
                        "segments the %d tile(s) not collected", self.job_id, budget_s, self.tracker.pending_count)
        log.info("job %s: collected %d mask tile(s) reported while the job was interrupted", self.job_id, collected)
        return collected

    def _wait_for_room(self, count: int) -> None:
        """Collect reports until ``count`` more tiles fit in the window; the window's share of the timeout applies."""
        if not self._window:
            return
        budget = self._settings.job_timeout_s(self._window)
        progress_at = time.monotonic()
        while self.tracker.pending_count and self.tracker.pending_count + count > self._window:
            started = time.monotonic()
            before = self.tracker.pending_count
            _collect_reports(self._collector, self._results, wait_s=ROOM_WAIT_S)
            now = time.monotonic()
            self.seconds["collect"] += now - started
            self._check_workers_when_due()
            if self.tracker.pending_count < before:
                progress_at = now
            elif now - progress_at > budget:
                raise JobTimeout(
                    f"no tile finished for {now - progress_at:.0f} s while {self.tracker.pending_count} "
                    "were in flight; "
                    "raise timeout_per_tile_s or add workers, then rerun to resume",
                    {name: "timed out" for name in self.tracker.pending},
                )

    def _check_workers_when_due(self) -> None:
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + HEALTH_CHECK_EVERY_S
            _check_workers(self.backend, self._collector, results=self._results, dead_letters=self._dead_letters,
                           revive=self.revive_idle_workers)

    def _finish_sending(self) -> None:
        if self._sending is not None:
            sending, self._sending = self._sending, None
            self.seconds["upload"] += sending.result()

    def _upload(self, group: str, tiles: list[tuple[int, np.ndarray | Path]]) -> float:
        """Runs on the sender thread: tile objects to the input bucket, then their messages; returns seconds taken."""
        started = time.monotonic()
        bundles = [tiles[i:i + self._per_message] for i in range(0, len(tiles), self._per_message)]
        objects, messages = [], []
        for bundle in bundles:
            indices = tuple(index for index, _ in bundle)
            key = tiles_key(self.job_id, group, indices)
            data = pack_tiles(np.stack([tile_pixels(tile, size=self._settings.tile_size) for _, tile in bundle]))
            objects.append((key, data))
            messages.append(_message(self.job_id, group, indices, key, model=self.backend.model,
                                     tta=self._settings.tta, reply=self.results_url))
        self._storage.put_many(self.backend.input_bucket, objects)
        self._tile_queue.send_many(messages)
        return time.monotonic() - started


def in_flight_window(settings: Settings, *, backend: str, workers: int) -> int:
    """Most tiles sent and not yet collected (0: no limit): the setting, or the backend's default."""
    if settings.max_tiles_in_flight:
        return settings.max_tiles_in_flight
    return IN_FLIGHT_PER_LOCAL_WORKER * max(1, workers) if backend == "local" else 0


@contextmanager
def open_job(backend: Backend, *, layout: DatasetLayout, settings: Settings, job_id: str, workers: int,
             show_progress: bool = True, worker_logs: Path | None = None) -> Iterator[Job]:
    """Create the job's results queue and start ``workers`` workers; on leaving, clean up whatever happened.

    Leaving the block, normally or by any exception (Ctrl-C and SIGTERM included), stops the
    workers and deletes the results queue and the job's S3 prefixes; masks already collected stay.
    On Ctrl-C or SIGTERM the masks reported by then are collected first (:meth:`Job.collect_reported`),
    and the interrupt is raised again as it came. Signals after it do not cut the clean-up short
    (:class:`_InterruptGuard`). ``worker_logs`` is where local workers write their logs, read
    for the reason a worker rejected a message.
    """
    sqs = backend.clients.sqs()
    results_url = create_results_queue(sqs, prefix=settings.results_queue_prefix, job=job_id)
    log.info("job %s started on the %s backend", job_id, backend.name)
    job = Job(backend, results_url=results_url, layout=layout, settings=settings, job_id=job_id,
              show_progress=show_progress, worker_logs=worker_logs)
    job._guard.install()
    try:
        try:
            job.start_workers(workers)
            yield job
        except BaseException as exc:
            job.close(after_failure=True, interrupted=isinstance(exc, KeyboardInterrupt))
            raise
        job.close(after_failure=False)
    finally:
        job._guard.uninstall()


def raise_for_lost_tiles(report: JobReport) -> JobReport:
    """The report of a job whose every tile completed; JobFailed naming each tile that did not."""
    if report.dead:
        listed = "\n".join(f"  {name}: {reason}" for name, reason in sorted(report.dead.items()))
        raise JobFailed(
            f"{len(report.dead)} of {report.tiles} tile(s) failed; the other tiles are kept, so a rerun "
            f"redoes only these after the cause is fixed:\n{listed}",
            report.dead,
        )
    return report


def run_job(backend: Backend, groups: list[PreparedGroup], *, layout: DatasetLayout, settings: Settings,
            job_id: str, show_progress: bool = True) -> JobReport:
    """Segment the pending tiles of ``groups`` (files in the dataset); JobFailed names tiles that never completed."""
    count = sum(len(g.pending) for g in groups)
    with open_job(backend, layout=layout, settings=settings, job_id=job_id, workers=min(settings.workers, count),
                  show_progress=show_progress) as job:
        for prepared in groups:
            job.send(prepared.group, [(i, layout.tile_source(prepared.group, i)) for i in prepared.pending])
        job.seal()
        job.wait()
    return raise_for_lost_tiles(job.report())
