"""One segmentation job through a backend: upload tiles, enqueue, track, collect masks.

The job owns its S3 prefix ``<job_id>/`` in both buckets and its results queue; all of them
are removed when the job ends, also on failure or Ctrl-C. Masks are written into the dataset
as they arrive, so finished tiles survive a failed or interrupted job::

    report = run_job(backend, prepared_groups, layout=layout, settings=settings, job_id=new_job_id())
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial

import numpy as np
from tqdm import tqdm

from am.backends import Backend
from am.dataset import DatasetLayout
from am.errors import AmError, InputError, JobFailed, JobTimeout, LauncherError, MessageError
from am.imageio import decode_png, write_png
from am.messages import RESULT_DONE, TileMessage, TileResult, tile_key, tile_name
from am.prepare import PreparedGroup
from am.settings import Settings
from am.tracking import JobTracker
from am.transport.queue import Queue, create_results_queue, delete_queue
from am.transport.retry import DEFAULT_POLICY, RetryPolicy
from am.transport.storage import Storage

log = logging.getLogger(__name__)

RESULT_WAIT_S = 2
HEALTH_CHECK_EVERY_S = 5.0
# Clean-up after a failure: a couple of quick tries, so a dead endpoint does not hold up the error.
CLEANUP_RETRY_AFTER_FAILURE = RetryPolicy(attempts=2, base_s=0.2, max_wait_s=1.0)


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


def _messages(job_id: str, groups: list[PreparedGroup], *, model: str, reply: str) -> list[str]:
    bodies = []
    for prepared in groups:
        for index in prepared.pending:
            key = tile_key(job_id, prepared.group, index)
            bodies.append(TileMessage(job=job_id, group=prepared.group, tile=index, input=key, output=key,
                                      model=model, reply=reply).to_json())
    return bodies


class _Collector:
    """Turns worker reports into local mask files and tracker state."""

    def __init__(self, *, job_id: str, tracker: JobTracker, storage: Storage, bucket: str,
                 layout: DatasetLayout, tile_size: int, on_done: Callable[[int], None]) -> None:
        self.job_id = job_id
        self.tracker = tracker
        self.storage = storage
        self.bucket = bucket
        self.layout = layout
        self.tile_size = tile_size
        self.on_done = on_done

    def handle_results(self, bodies: list[str]) -> None:
        done: list[TileResult] = []
        for body in bodies:
            try:
                result = TileResult.from_json(body)
            except MessageError as exc:
                log.warning("ignoring a malformed report on the results queue: %s", exc)
                continue
            if result.job != self.job_id:
                log.warning("ignoring a report for job %s on the queue of job %s", result.job, self.job_id)
                continue
            if result.status == RESULT_DONE:
                if self.tracker.is_pending(result.name):
                    done.append(result)
                else:
                    self.tracker.done(result.name)  # counts the duplicate
            else:
                self.tracker.failed(result.name, attempt=result.attempt, error=result.error)
        if done:
            self._collect(done)

    def _collect(self, results: list[TileResult]) -> None:
        keys = [tile_key(self.job_id, r.group, r.tile) for r in results]
        blobs = self.storage.get_many(self.bucket, keys)
        for result, key in zip(results, keys, strict=True):
            try:
                mask = decode_png(blobs[key], name=f"s3://{self.bucket}/{key}")
                if mask.shape != (self.tile_size, self.tile_size):
                    raise InputError(f"mask {key} is {mask.shape}, expected {self.tile_size}x{self.tile_size}")
            except InputError as exc:
                self.tracker.give_up(result.name, f"worker wrote an unusable mask: {exc}")
                continue
            write_png(self.layout.tile_mask(result.group, result.tile), np.ascontiguousarray(mask))
            if self.tracker.done(result.name, compute_s=result.compute_s):
                self.on_done(1)

    def handle_dead_letters(self, queue: Queue) -> None:
        """Tiles whose messages reached the dead-letter queue will never be reported: give up on them."""
        while True:
            received = queue.receive(max_messages=10, wait_s=0)
            if not received:
                return
            mine, others = [], []
            for message in received:
                try:
                    tile = TileMessage.from_json(message.body)
                except MessageError:
                    others.append(message)
                    continue
                (mine if tile.job == self.job_id else others).append(message)
                if tile.job == self.job_id:
                    # The message's own receive count is no guide here: reading the DLQ adds to it.
                    self.tracker.give_up(tile.name, f"moved to the dead-letter queue after "
                                                    f"{self.tracker.max_attempts} receives without success")
            if mine:
                queue.delete_many([m.receipt_handle for m in mine])
            for message in others:
                queue.change_visibility(message.receipt_handle, 0)
            if others and not mine:
                return


def _drain_results(collector: _Collector, results: Queue) -> None:
    """Collect every report waiting on the results queue, until a receive comes back empty."""
    while received := results.receive(max_messages=10, wait_s=RESULT_WAIT_S):
        collector.handle_results([m.body for m in received])
        results.delete_many([m.receipt_handle for m in received])


def _wait_for_tiles(backend: Backend, collector: _Collector, *, results: Queue, dead_letters: Queue,
                    deadline: float) -> None:
    tracker = collector.tracker
    next_check = time.monotonic() + HEALTH_CHECK_EVERY_S
    while not tracker.finished:
        received = results.receive(max_messages=10, wait_s=RESULT_WAIT_S)
        if received:
            collector.handle_results([m.body for m in received])
            results.delete_many([m.receipt_handle for m in received])
        now = time.monotonic()
        if now >= next_check and not tracker.finished:
            next_check = now + HEALTH_CHECK_EVERY_S
            collector.handle_dead_letters(dead_letters)
            if not tracker.finished and backend.launcher.alive() == 0:
                # Workers leave when the tile queue is empty, which can be long before their reports
                # are all collected (a big job on a busy machine): those reports still count.
                _drain_results(collector, results)
                collector.handle_dead_letters(dead_letters)
            if not tracker.finished and backend.launcher.alive() == 0:
                detail = ""
                tail = getattr(backend.launcher, "log_tail", None)
                if callable(tail):
                    detail = "\nlast worker log lines:\n" + tail()
                raise LauncherError(
                    f"all workers stopped while {len(tracker.pending)} tile(s) were pending; "
                    f"finished tiles are kept, rerun the same command to resume{detail}"
                )
        if now > deadline:
            raise JobTimeout(
                f"job did not finish in time: {len(tracker.pending)} of {tracker.total} tile(s) pending; "
                "raise timeout_per_tile_s or add workers, then rerun to resume",
                {name: "timed out" for name in tracker.pending},
            )


def _clean_up(backend: Backend, *, results_url: str, prefix: str, settings: Settings, after_failure: bool) -> None:
    """Stop the workers, delete the job's results queue and its S3 prefixes; every step is tried.

    After a failure (or Ctrl-C) the error that ended the job is the one the user must read, so a
    clean-up step that fails is logged, not raised, and gets few retries: when the endpoint is
    gone, waiting out the full policy for each step would only delay that message. After a
    success the first clean-up error is raised, since the job's data may have been left behind.
    """
    retry = CLEANUP_RETRY_AFTER_FAILURE if after_failure else DEFAULT_POLICY
    sqs = backend.clients.sqs()
    storage = Storage(backend.clients.s3(), threads=settings.transfer_threads, retry=retry)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("stop the workers", backend.launcher.stop),
        (f"delete the results queue {results_url}", partial(delete_queue, sqs, results_url, retry=retry)),
    ]
    if not settings.keep_job_data:
        for bucket in (backend.input_bucket, backend.output_bucket):
            steps.append((f"delete s3://{bucket}/{prefix}", partial(storage.delete_prefix, bucket, prefix)))
    errors: list[AmError] = []
    for what, step in steps:
        try:
            step()
        except AmError as exc:
            log.error("could not %s while ending job %s: %s", what, prefix.rstrip("/"), exc)
            errors.append(exc)
    if errors and not after_failure:
        raise errors[0]


def run_job(backend: Backend, groups: list[PreparedGroup], *, layout: DatasetLayout, settings: Settings,
            job_id: str, show_progress: bool = True) -> JobReport:
    """Segment every pending tile of ``groups``; raises JobFailed naming tiles that never completed."""
    names = [tile_name(g.group, i) for g in groups for i in g.pending]
    tracker = JobTracker(names, max_attempts=settings.max_receive_count)
    sqs = backend.clients.sqs()
    storage = Storage(backend.clients.s3(), threads=settings.transfer_threads)
    seconds: dict[str, float] = {}
    results_url = create_results_queue(sqs, prefix=settings.results_queue_prefix, job=job_id)
    prefix = f"{job_id}/"
    log.info("job %s: %d tile(s) on the %s backend", job_id, len(names), backend.name)
    try:
        backend.launcher.start(min(settings.workers, len(names)), backend.worker_environment)
        started = time.monotonic()
        items = [(tile_key(job_id, g.group, i), layout.tile_source(g.group, i)) for g in groups for i in g.pending]
        with tqdm(total=len(items), unit="tile", desc="upload", leave=False, disable=not show_progress) as bar:
            storage.put_many(backend.input_bucket, items, progress=bar.update)
        Queue(sqs, backend.queue_url).send_many(_messages(job_id, groups, model=backend.model, reply=results_url))
        seconds["upload"] = time.monotonic() - started
        started = time.monotonic()
        with tqdm(total=len(names), unit="tile", desc="segment", disable=not show_progress) as bar:
            collector = _Collector(job_id=job_id, tracker=tracker, storage=storage, bucket=backend.output_bucket,
                                   layout=layout, tile_size=settings.tile_size, on_done=bar.update)
            deadline = time.monotonic() + settings.job_timeout_s(len(names))
            _wait_for_tiles(backend, collector, results=Queue(sqs, results_url),
                            dead_letters=Queue(sqs, backend.dead_letter_queue_url), deadline=deadline)
        seconds["segment"] = time.monotonic() - started
    except BaseException:
        _clean_up(backend, results_url=results_url, prefix=prefix, settings=settings, after_failure=True)
        raise
    _clean_up(backend, results_url=results_url, prefix=prefix, settings=settings, after_failure=False)
    report = JobReport(job_id, len(names), len(tracker.completed), tracker.duplicates, tracker.compute_s,
                       seconds, tracker.dead)
    if tracker.dead:
        listed = "\n".join(f"  {name}: {reason}" for name, reason in sorted(tracker.dead.items()))
        raise JobFailed(
            f"{len(tracker.dead)} of {len(names)} tile(s) failed; the other tiles are kept, so a rerun "
            f"redoes only these after the cause is fixed:\n{listed}",
            tracker.dead,
        )
    return report
