"""What comes back from the workers: reports on the job's results queue, and dead letters.

Reports become mask files in the dataset and tracker state; this job's messages in the
deployment's shared dead-letter queue become tiles given up, with the reason a person can act on.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from am.dataset import DatasetLayout
from am.errors import InputError, MessageError
from am.files import write_atomic
from am.imageio import encode_png
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
from am.tilepack import unpack_masks
from am.tracking import JobTracker
from am.transport.queue import Queue, Received
from am.transport.storage import Storage

log = logging.getLogger(__name__)

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
# The job's last scan, which deletes its dead letters, long-polls: SQS answers a short poll from a
# sample of its servers, so a queue of a few messages may come back empty while it holds some, and
# those would be left for good. A long poll asks every server; its last, empty receive costs this long.
# The scans while the job runs short-poll: one that misses a message is followed by another seconds later.
FINAL_SCAN_WAIT_S = 1
# A worker that saw a tile's last attempt fail moves its message to the dead-letter queue and then
# reports the failure, milliseconds apart: a scan between the two would give the tile up without the
# worker's error. Where a scan finds this job's pending tiles dead-lettered, the reports waiting are
# collected first, with a long poll of this long.
DEAD_LETTER_REPORT_WAIT_S = 1


class ResultCollector:
    """Turns worker reports into local mask files and tracker state, and dead letters into given-up tiles.

    The job's one reader of its results queue (:meth:`receive`), so what an interrupt leaves in
    hand or hidden is known here and can still be collected (see ``Job.collect_reported``).
    """

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

    def receive(self, results: Queue, *, wait_s: int) -> bool:
        """One receive on the results queue: handle what came, then delete it; False when nothing came."""
        self.hidden_until = time.monotonic() + wait_s + RESULT_HOLD_S
        received = results.receive(max_messages=10, wait_s=wait_s, visibility_timeout=RESULT_HOLD_S)
        self.hidden_until = 0.0
        if received:
            self.in_hand = [m.body for m in received]
            self.handle_results(self.in_hand)
            self.in_hand = []
            results.delete_many([m.receipt_handle for m in received])
        return bool(received)

    def drain(self, results: Queue, *, wait_s: int) -> None:
        """Collect every report waiting on the results queue, until a receive of ``wait_s`` comes back empty."""
        while self.receive(results, wait_s=wait_s):
            pass

    def handle_results(self, bodies: list[str]) -> None:
        """Apply one receive's reports: the masks reported done first, then the failures.

        In that order because a duplicate delivery may bring a tile's ``done`` and its last-attempt
        ``failed`` together: giving up first could finish the job, and the mask already written
        would then count as a late duplicate and be thrown away.
        """
        done: list[TileResult] = []
        failures: list[TileResult] = []
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
                failures.append(result)
        if done:
            self._collect(done)
        for result in failures:
            for name in result.names:
                self.tracker.failed(name, attempt=result.attempt, error=result.error)

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
        blobs = self.storage.get_many(self.bucket, keys, skip_missing=True)
        for result, key in zip(results, keys, strict=True):
            if key not in blobs:
                # One result's fault (deleted, or written to another bucket): the others are still collected.
                for name in result.names:
                    self.tracker.give_up(name, f"the worker reported its masks written to s3://{self.bucket}/{key}, "
                                               "but there is no such object (deleted since, or the worker writes to "
                                               "another output bucket)")
                continue
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

    def handle_dead_letters(self, queue: Queue, *, results: Queue | None = None) -> None:
        """Give up on this job's tiles whose messages reached the dead-letter queue, and leave the messages there.

        They stay for ``am.scale redrive``: moved back once the cause is fixed, such a tile still
        completes if its report comes while the job runs (see :meth:`JobTracker.accepts`). Each
        message read is held for the scan, so none is read twice, and made visible again after it;
        the job deletes its own when it ends (:meth:`delete_dead_letters`). The scan reads the
        whole queue (up to ``DEAD_LETTER_SCAN_MAX``): it may hold many of other jobs.

        With the job's ``results`` queue, the reports waiting there are collected before any tile is
        given up (see :data:`DEAD_LETTER_REPORT_WAIT_S`), so that a tile the worker reported failed
        on its last attempt is given up with the worker's error, as that report alone would.
        """
        received = self._scan(queue)
        try:
            letters = [(message, tile) for message in received
                       if (tile := _tile_message(message.body)) is not None and tile.job == self.job_id
                       and any(self.tracker.is_pending(name) for name in tile.names)]
            if letters and results is not None:
                self.drain(results, wait_s=DEAD_LETTER_REPORT_WAIT_S)
            for message, tile in letters:
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
        received = self._scan(queue, wait_s=FINAL_SCAN_WAIT_S)
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

    def _scan(self, queue: Queue, *, wait_s: int = 0) -> list[Received]:
        """Every message of the dead-letter queue, up to ``DEAD_LETTER_SCAN_MAX``, each held for the scan.

        Stops when a receive (of ``wait_s``, see :data:`FINAL_SCAN_WAIT_S`) brings nothing new. The
        caller makes them visible again (or deletes them); if a receive fails, those already read are
        released here before the error goes on.
        """
        seen: dict[str, Received] = {}
        try:
            while len(seen) < DEAD_LETTER_SCAN_MAX:
                wanted = min(10, DEAD_LETTER_SCAN_MAX - len(seen))
                received = queue.receive(max_messages=wanted, wait_s=wait_s, visibility_timeout=DEAD_LETTER_HOLD_S)
                new = [m for m in received if m.message_id not in seen]
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
        workers' logs are read for it, and where they were read and none names it, no worker
        rejected it: the ones that held it stopped (killed, or crashed) before they could report.
        Elsewhere the text says what to search the logs for.
        """
        marker = f"rejected message {message_id} "
        if self.worker_logs is not None and self.worker_logs.is_dir():
            read = 0
            for path in sorted(self.worker_logs.glob("*.log")):
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")
                except OSError as exc:
                    log.debug("cannot read worker log %s: %s", path, exc)
                    continue
                read += 1
                for line in reversed(text.splitlines()):
                    found = line.find(marker)
                    if found >= 0:
                        why = _REJECT_REASON.sub("", line[found + len(marker):], count=1)
                        return f"a worker rejected its message: {why.strip()[:500]} (worker log {path})"
            if read:
                return (f"no worker reported a failure for it, nor rejected it (none of the {read} worker log(s) in "
                        f"{self.worker_logs} names it): the workers that held it stopped before they could "
                        "report (killed, or crashed); the logs' last lines say how")
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
