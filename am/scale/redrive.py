"""Send tiles from the dead-letter queue back to the tile queue, once the cause is fixed.

A tile is worth re-driving only while its job waits for it: each tile message names its
job's results queue, which the orchestrator deletes when the job ends. Messages whose
results queue is gone are *orphans*: they are reported and left in place, or deleted with
``drop_orphans``. Messages that do not parse, or belong to another job than ``job``, stay::

    report = redrive(sqs, resources, job="j20240101-1", dry_run=True)

SQS's own StartMessageMoveTask moves everything blindly; this reads each message first.
Messages are hidden for :data:`HOLD_S` while a run looks at them; a run that stops part-way
(Ctrl-C, an error) makes each one it did not delete visible again before it ends, and logs how
many it moved by then, so that a rerun at once picks up the rest.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from am.errors import AmError, CleanupIncomplete, MessageError, ScaleError
from am.launchers.aws_stack import AwsResources, aws_message
from am.messages import TileMessage
from am.transport.queue import MAX_RECEIVE, NONEXISTENT_QUEUE_CODES, Queue
from am.transport.retry import RetryPolicy

log = logging.getLogger(__name__)

# Long enough to go through the whole dead-letter queue before a held message shows again.
HOLD_S = 300
# A short long-poll: an empty answer then means the queue has no visible message left.
RECEIVE_WAIT_S = 2
# Clean-up after a stop (Ctrl-C, an error): a couple of quick tries, so a dead endpoint does not hold up the
# message the user must read; what it cannot release shows again after HOLD_S anyway.
CLEANUP_RETRY = RetryPolicy(attempts=2, base_s=0.2, max_wait_s=1.0)


@dataclass(frozen=True)
class RedriveReport:
    """Each entry is one message, named by its first tile (``job/group/NNNN (+31 more)`` where it
    carries more): a message is what moves, and what ``max_messages`` counts."""

    moved: tuple[str, ...]
    orphans: tuple[str, ...]
    dropped: tuple[str, ...]
    other_jobs: int
    unreadable: int
    dry_run: bool
    drop_orphans: bool = False


@dataclass
class _Progress:
    """What a re-drive has done so far, and what it holds in the dead-letter queue (received, hidden for HOLD_S)."""

    moved: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    other_jobs: int = 0
    unreadable: int = 0
    # Receipt handle -> name, in order: every message received and neither deleted nor released yet.
    hidden: dict[str, str] = field(default_factory=dict)
    # Of those, the ones SQS took on the tile queue: only their deletion from the dead-letter queue is left.
    sent: dict[str, str] = field(default_factory=dict)
    # Of those, the ones whose send was cut short: they may be on the tile queue already, or not.
    sending: dict[str, str] = field(default_factory=dict)
    # Message id -> its latest receipt handle.
    handle_of: dict[str, str] = field(default_factory=dict)


class _ForcedQuit(BaseException):
    """The user insisted on quitting the clean-up of a stopped re-drive."""


class _StopGuard:
    """Ctrl-C and SIGTERM during a re-drive: they stop it between two calls to SQS, never inside the one
    that receives, or the send and delete that move a batch, which would leave messages half-moved;
    and they cannot cut short the clean-up that makes the held messages visible again.

    Outside those calls a signal stops the run at once, as before. Inside them the first is held
    until they are done (logged), one more stops at once. During the clean-up the first is logged,
    one more quits it (:class:`_ForcedQuit`). Installed in the main thread only, and only over
    Python-level handlers (the default Ctrl-C handler, the command line's SIGTERM one).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.in_call = False
        self.held = False
        self.cleaning = False
        self.holding = 0  # messages the clean-up makes visible again, while it runs
        self.extra = 0
        self._previous: dict[int, Any] = {}

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
        if self.cleaning:
            self.extra += 1
            if self.extra == 1:
                log.warning("re-drive stopping: making the %d message(s) it holds visible again in the dead-letter "
                            "queue; press Ctrl-C again (or send SIGTERM again) to quit at once and leave them hidden "
                            "for up to %d s", self.holding, HOLD_S)
                return
            raise _ForcedQuit(f"signal {signum} during the clean-up of the re-drive")
        if self.in_call and not self.held:
            self.held = True
            log.warning("re-drive stopping once the current call to SQS is done, so that no message is left "
                        "half-moved; press Ctrl-C again (or send SIGTERM again) to stop at once")
            return
        self._previous[signum](signum, frame)

    @contextmanager
    def call(self) -> Iterator[None]:
        """A call (or send and delete) that must not be cut in two: a signal meanwhile stops the run after it."""
        self.in_call = True
        try:
            yield
        finally:
            self.in_call = False
        if self.held:
            raise KeyboardInterrupt("signal during a call to SQS")


def redrive(sqs_client: Any, resources: AwsResources, *, job: str | None = None, max_messages: int | None = None,
            drop_orphans: bool = False, dry_run: bool = False) -> RedriveReport:
    """Move dead tiles back to the tile queue; with ``dry_run`` only say what would move.

    However it ends (Ctrl-C, an error), every message it received and did not delete is made
    visible again before it returns or raises, and a stop logs how many moved by then.
    """
    if max_messages is not None and max_messages < 1:
        raise ScaleError(f"max_messages = {max_messages}: give at least 1, or leave it out for all")
    dead = Queue(sqs_client, resources.dead_letter_queue_url)
    tiles = Queue(sqs_client, resources.queue_url)
    progress = _Progress()
    guard = _StopGuard()
    try:
        guard.install()
        try:
            _move(sqs_client, dead, tiles, progress, guard, job=job, max_messages=max_messages,
                  drop_orphans=drop_orphans, dry_run=dry_run)
        except BaseException as exc:
            left = _clean_up(Queue(sqs_client, dead.url, retry=CLEANUP_RETRY), progress, guard)
            summary = _stopped(progress, left, dry_run=dry_run, error=not isinstance(exc, KeyboardInterrupt))
            if left and isinstance(exc, KeyboardInterrupt):
                raise CleanupIncomplete(summary) from None
            (log.error if left else log.warning)("%s", summary)
            raise
        # Done: release what was held (skipped messages, or all of a dry run), as the run always did. A
        # signal meanwhile is only logged (the run is complete once they are released); a second one quits.
        if left := _clean_up(dead, progress, guard):
            summary = _stopped(progress, left, dry_run=dry_run, error=guard.extra < 2)
            raise CleanupIncomplete(summary) if guard.extra > 1 else ScaleError(summary)
    finally:
        guard.uninstall()
    report = RedriveReport(tuple(progress.moved), tuple(progress.orphans), tuple(progress.dropped),
                           progress.other_jobs, progress.unreadable, dry_run, drop_orphans)
    log.info("re-drive%s: %d moved, %d orphans, %d dropped, %d other jobs, %d unreadable",
             " (dry run)" if dry_run else "", len(report.moved), len(report.orphans), len(report.dropped),
             report.other_jobs, report.unreadable)
    return report


def _move(sqs_client: Any, dead: Queue, tiles: Queue, progress: _Progress, guard: _StopGuard, *, job: str | None,
          max_messages: int | None, drop_orphans: bool, dry_run: bool) -> None:
    """The re-drive's loop: receive a batch, sort it, move (or drop) what moves; the rest stays in ``hidden``."""
    reply_alive: dict[str, bool] = {}
    seen: set[str] = set()
    hidden = progress.hidden
    while max_messages is None or len(progress.moved) + len(progress.dropped) < max_messages:
        done = len(progress.moved) + len(progress.dropped)
        room = MAX_RECEIVE if max_messages is None else min(MAX_RECEIVE, max_messages - done)
        with guard.call():
            batch = dead.receive(max_messages=room, wait_s=RECEIVE_WAIT_S, visibility_timeout=HOLD_S)
            for received in batch:
                # A held message shown again after HOLD_S (a long run) comes with a new handle; the old one is void.
                if (old := progress.handle_of.get(received.message_id)) is not None:
                    hidden.pop(old, None)
                progress.handle_of[received.message_id] = received.receipt_handle
                hidden[received.receipt_handle] = received.message_id
        if not batch:
            break
        send: dict[str, tuple[str, str]] = {}  # handle -> (name, body)
        drop: dict[str, str] = {}  # handle -> name
        for received in batch:
            if received.message_id in seen:
                continue
            seen.add(received.message_id)
            try:
                message = TileMessage.from_json(received.body)
            except MessageError as exc:
                log.warning("leaving unreadable message %s in the dead-letter queue: %s", received.message_id, exc)
                progress.unreadable += 1
                continue
            name = f"{message.job}/{message.name}"
            hidden[received.receipt_handle] = name
            if job and message.job != job:
                progress.other_jobs += 1
            elif not _reply_alive(sqs_client, message.reply, reply_alive):
                if drop_orphans and not dry_run:
                    drop[received.receipt_handle] = name
                else:
                    progress.orphans.append(name)
            elif dry_run:
                progress.moved.append(name)
            else:
                send[received.receipt_handle] = (name, received.body)
        if not send and not drop:
            continue
        with guard.call():
            # Send before delete: a stop in between duplicates a tile, which workers handle, but loses none;
            # the clean-up then deletes what SQS took on the tile queue (see _clean_up).
            if send:
                progress.sending.update((handle, name) for handle, (name, _) in send.items())
                tiles.send_many([body for _, body in send.values()])
                progress.sent.update(progress.sending)
                progress.sending.clear()
            dead.delete_many([*send, *drop])
            for handle, (name, _) in send.items():
                hidden.pop(handle, None)
                progress.sent.pop(handle, None)
                progress.moved.append(name)
            for handle, name in drop.items():
                hidden.pop(handle, None)
                progress.dropped.append(name)


def _clean_up(dead: Queue, progress: _Progress, guard: _StopGuard) -> int:
    """Delete from the dead-letter queue what is on the tile queue already, make the rest visible at once
    (visibility 0); returns how many stay hidden, up to HOLD_S (0 when all went well).

    Deleting a message whose send SQS confirmed loses nothing (its copy is on the tile queue), and
    is one call per 10 messages with handles received well within HOLD_S: quicker and cleaner
    than releasing it to be moved twice by the next run. A message whose send was cut short may
    or may not be on the tile queue: it is released, never deleted, so that no tile is lost.
    """
    hidden = progress.hidden
    guard.cleaning, guard.holding = True, len(hidden)
    try:
        if progress.sent:
            try:
                dead.delete_many(list(progress.sent))
            except AmError as exc:
                log.error("could not delete the %d message(s) already sent to the tile queue from the dead-letter "
                          "queue: %s", len(progress.sent), exc)
            else:
                for handle, name in progress.sent.items():
                    if hidden.pop(handle, None) is not None:
                        progress.moved.append(name)
                progress.sent.clear()
        if hidden:
            try:
                dead.change_visibility_many(list(hidden), 0)
            except AmError as exc:
                log.error("could not make the %d message(s) held by the re-drive visible again in the dead-letter "
                          "queue: %s", len(hidden), exc)
                return len(hidden)
            released = len(hidden)
            hidden.clear()
            log.debug("made %d message(s) visible again in the dead-letter queue", released)
        return 0
    except _ForcedQuit:
        return len(hidden)
    finally:
        guard.cleaning = False


def _stopped(progress: _Progress, left: int, *, dry_run: bool, error: bool) -> str:
    """What a re-drive that did not run to its end did: moved so far, released, left hidden, moved twice by a rerun."""
    if dry_run:
        parts = [f"re-drive (dry run) stopped after looking at {len(progress.moved)} message(s) that would move"]
    else:
        parts = [f"re-drive stopped after moving {len(progress.moved)} message(s) back to the tile queue"
                 + (f" and deleting {len(progress.dropped)} of ended jobs" if progress.dropped else "")]
    if left:
        parts.append(f"{left} message(s) it received stay hidden in the dead-letter queue for up to {HOLD_S} s "
                     "(a rerun before then does not see them)")
    else:
        parts.append("every message it received and did not move is visible again in the dead-letter queue")
    if progress.sent:
        parts.append(f"{len(progress.sent)} message(s) among those are on the tile queue already: a rerun moves them "
                     "again (their tiles are segmented twice, which does no harm)")
    if progress.sending:
        parts.append(f"{len(progress.sending)} message(s) among those were being sent to the tile queue and may be "
                     "there already: a rerun moves them again (their tiles are then segmented twice, which does no "
                     "harm)")
    if not dry_run:
        fixed = ", once the error is dealt with," if error else ""
        parts.append(f"rerun the same command{fixed} to move the rest")
    return "; ".join(parts)


def _reply_alive(sqs_client: Any, url: str, cache: dict[str, bool]) -> bool:
    """Whether a job's results queue still exists, i.e. its orchestrator still waits for tiles."""
    if url not in cache:
        try:
            sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            cache[url] = True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in NONEXISTENT_QUEUE_CODES:
                raise ScaleError(f"cannot check results queue {url}: {aws_message(exc)}") from exc
            cache[url] = False
        except BotoCoreError as exc:
            raise ScaleError(f"cannot check results queue {url}: {exc}") from exc
    return cache[url]
