"""Send tiles from the dead-letter queue back to the tile queue, once the cause is fixed.

A tile is worth re-driving only while its job waits for it: each tile message names its
job's results queue, which the orchestrator deletes when the job ends. Messages whose
results queue is gone are *orphans*: they are reported and left in place, or deleted with
``drop_orphans``. Messages that do not parse, or belong to another job than ``job``, stay::

    report = redrive(sqs, resources, job="j20240101-1", dry_run=True)

SQS's own StartMessageMoveTask moves everything blindly; this reads each message first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from am.errors import MessageError, ScaleError
from am.launchers.aws_stack import AwsResources, aws_message
from am.messages import TileMessage
from am.transport.queue import MAX_RECEIVE, NONEXISTENT_QUEUE_CODES, Queue

log = logging.getLogger(__name__)

# Long enough to go through the whole dead-letter queue before a held message shows again.
HOLD_S = 300
# A short long-poll: an empty answer then means the queue has no visible message left.
RECEIVE_WAIT_S = 2


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


def redrive(sqs_client: Any, resources: AwsResources, *, job: str | None = None, max_messages: int | None = None,
            drop_orphans: bool = False, dry_run: bool = False) -> RedriveReport:
    """Move dead tiles back to the tile queue; with ``dry_run`` only say what would move."""
    if max_messages is not None and max_messages < 1:
        raise ScaleError(f"max_messages = {max_messages}: give at least 1, or leave it out for all")
    dead = Queue(sqs_client, resources.dead_letter_queue_url)
    tiles = Queue(sqs_client, resources.queue_url)
    reply_alive: dict[str, bool] = {}
    moved: list[str] = []
    orphans: list[str] = []
    dropped: list[str] = []
    held: list[str] = []
    other_jobs = unreadable = 0
    seen: set[str] = set()
    try:
        while max_messages is None or len(moved) + len(dropped) < max_messages:
            room = MAX_RECEIVE if max_messages is None else min(MAX_RECEIVE, max_messages - len(moved) - len(dropped))
            batch = dead.receive(max_messages=room, wait_s=RECEIVE_WAIT_S, visibility_timeout=HOLD_S)
            if not batch:
                break
            send: list[str] = []
            delete: list[str] = []
            for received in batch:
                if received.message_id in seen:
                    held.append(received.receipt_handle)
                    continue
                seen.add(received.message_id)
                try:
                    message = TileMessage.from_json(received.body)
                except MessageError as exc:
                    log.warning("leaving unreadable message %s in the dead-letter queue: %s", received.message_id, exc)
                    unreadable += 1
                    held.append(received.receipt_handle)
                    continue
                name = f"{message.job}/{message.name}"
                if job and message.job != job:
                    other_jobs += 1
                    held.append(received.receipt_handle)
                elif not _reply_alive(sqs_client, message.reply, reply_alive):
                    if drop_orphans and not dry_run:
                        dropped.append(name)
                        delete.append(received.receipt_handle)
                    else:
                        orphans.append(name)
                        held.append(received.receipt_handle)
                elif dry_run:
                    moved.append(name)
                    held.append(received.receipt_handle)
                else:
                    moved.append(name)
                    send.append(received.body)
                    delete.append(received.receipt_handle)
            # Send before delete: a crash in between duplicates a tile, which workers handle, but loses none.
            if send:
                tiles.send_many(send)
            if delete:
                dead.delete_many(delete)
    finally:
        if held:
            dead.change_visibility_many(held, 0)
    report = RedriveReport(tuple(moved), tuple(orphans), tuple(dropped), other_jobs, unreadable, dry_run,
                           drop_orphans)
    log.info("re-drive%s: %d moved, %d orphans, %d dropped, %d other jobs, %d unreadable",
             " (dry run)" if dry_run else "", len(moved), len(orphans), len(dropped), other_jobs, unreadable)
    return report


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
