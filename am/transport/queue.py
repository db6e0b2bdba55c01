"""SQS queues: the tile queue with its dead-letter queue, and one results queue per job.

A :class:`Queue` wraps one queue URL with the batch calls the pipeline needs; every call
goes through the shared retry policy and batch entries that fail are retried or reported,
never dropped::

    queue = Queue(sqs, url)
    queue.send_many([msg.to_json() for msg in messages])       # chunks of 10
    for received in queue.receive(max_messages=10, wait_s=20):
        ...
    queue.delete_many([r.receipt_handle for r in done])

Limits are from the SQS developer guide, "Amazon SQS quotas" and "Amazon SQS visibility
timeout" (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html,
https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-visibility-timeout.html).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from am.errors import TransportError
from am.transport.retry import DEFAULT_POLICY, RetryableError, RetryPolicy, error_code

log = logging.getLogger(__name__)

# Entries per SendMessageBatch / DeleteMessageBatch / ChangeMessageVisibilityBatch call.
MAX_BATCH = 10
# Messages per ReceiveMessage call.
MAX_RECEIVE = 10
# Longest long poll (ReceiveMessage WaitTimeSeconds).
MAX_WAIT_S = 20
# Longest visibility timeout: 12 hours from the first receive.
MAX_VISIBILITY_S = 43200
# Largest message body, and largest total payload of one batch call.
MAX_MESSAGE_BYTES = 256 * 1024
# Retention: up to 14 days. The DLQ keeps messages longer than the queue, so that a message
# that moves there keeps enough of its life to be looked at (its age carries over).
QUEUE_RETENTION_S = 4 * 24 * 3600
DEAD_LETTER_RETENTION_S = 14 * 24 * 3600
# Results queues live as long as a job; a day covers the longest job with room to spare.
RESULTS_RETENTION_S = 24 * 3600
NONEXISTENT_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
QUEUE_EXISTS_CODES = frozenset({"QueueAlreadyExists", "QueueNameExists"})


@dataclass(frozen=True)
class Received:
    """One received message: its body, the handle to delete or release it, and how often SQS delivered it."""

    body: str
    receipt_handle: str
    receive_count: int
    message_id: str


class Queue:
    """One SQS queue, by URL. Thread-safe as long as the boto3 client is (it is)."""

    def __init__(self, sqs_client: Any, url: str, *, retry: RetryPolicy = DEFAULT_POLICY) -> None:
        if not url:
            raise TransportError("queue URL is empty; pass the URL returned by create_queue or get_queue_url")
        self._sqs = sqs_client
        self._retry = retry
        self.url = url

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def send_many(self, bodies: Sequence[str]) -> None:
        """Send every body, in batches of at most 10 entries and 256 KiB; raises TransportError if any fails."""
        for body in bodies:
            size = len(body.encode("utf-8"))
            if size > MAX_MESSAGE_BYTES:
                raise TransportError(
                    f"message of {size} bytes for queue {self.name} exceeds the SQS limit of {MAX_MESSAGE_BYTES}; "
                    "send a key to an S3 object instead of the data"
                )
        rejected: list[dict[str, Any]] = []
        for chunk in _chunks_by_size(list(bodies)):
            entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)]
            rejected.extend(self._batch("send", self._sqs.send_message_batch, entries))
        if rejected:
            reasons = "; ".join(f"{f.get('Code')}: {f.get('Message', '')}" for f in rejected[:3])
            raise TransportError(f"send on queue {self.name} rejected {len(rejected)} of {len(bodies)} entries: "
                                 f"{reasons}")

    def receive(
        self, *, max_messages: int = MAX_RECEIVE, wait_s: float = MAX_WAIT_S, visibility_timeout: int | None = None
    ) -> list[Received]:
        """Receive up to ``max_messages`` (at most 10), long-polling up to ``wait_s`` seconds (at most 20)."""
        if not 1 <= max_messages <= MAX_RECEIVE:
            raise TransportError(f"max_messages = {max_messages} is outside 1..{MAX_RECEIVE}, the SQS limit")
        if not 0 <= wait_s <= MAX_WAIT_S:
            raise TransportError(f"wait_s = {wait_s} is outside 0..{MAX_WAIT_S} seconds, the SQS long-poll limit")
        kwargs: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": int(wait_s),
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
        }
        if visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = _check_visibility(visibility_timeout)
        response = self._retry.call(f"receive from {self.name}", self._sqs.receive_message, **kwargs)
        return [
            Received(
                body=m["Body"],
                receipt_handle=m["ReceiptHandle"],
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                message_id=m["MessageId"],
            )
            for m in response.get("Messages", [])
        ]

    def delete_many(self, handles: Sequence[str]) -> None:
        """Delete received messages, 10 per call; raises TransportError if any cannot be deleted."""
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        self._batches("delete", self._sqs.delete_message_batch, entries)

    def change_visibility(self, handle: str, seconds: int) -> None:
        """Hide a received message for ``seconds`` more from now (0 makes it visible at once)."""
        self._retry.call(
            f"change visibility on {self.name}", self._sqs.change_message_visibility,
            QueueUrl=self.url, ReceiptHandle=handle, VisibilityTimeout=_check_visibility(seconds),
        )

    def change_visibility_many(self, handles: Sequence[str], seconds: int) -> None:
        """:meth:`change_visibility` for many messages, 10 per call."""
        seconds = _check_visibility(seconds)
        entries = [{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": seconds} for i, h in enumerate(handles)]
        self._batches("change visibility", self._sqs.change_message_visibility_batch, entries)

    def depth(self) -> dict[str, int]:
        """Approximate counts: ``visible`` (waiting) and ``in_flight`` (received, not yet deleted)."""
        response = self._retry.call(
            f"get attributes of {self.name}", self._sqs.get_queue_attributes,
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        attributes = response.get("Attributes", {})
        return {
            "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        }

    def redrive(self) -> tuple[int, str | None]:
        """The queue's ``maxReceiveCount`` and its dead-letter queue's URL (its RedrivePolicy): after that
        many receives a message not deleted moves there. (0, None) for a queue without one, or with
        a policy that does not parse (logged): the caller then knows of no limit."""
        response = self._retry.call(
            f"get attributes of {self.name}", self._sqs.get_queue_attributes,
            QueueUrl=self.url, AttributeNames=["RedrivePolicy"],
        )
        policy = response.get("Attributes", {}).get("RedrivePolicy", "")
        if not policy:
            return 0, None
        try:
            count = parse_max_receive_count(policy)
            arn = str(json.loads(policy)["deadLetterTargetArn"])
            _, _, _, _, account, name = arn.split(":", 5)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("queue %s: %s; taking it as a queue without a dead-letter queue", self.name, exc)
            return 0, None
        url = self._retry.call(f"look up {name}", self._sqs.get_queue_url, QueueName=name,
                               QueueOwnerAWSAccountId=account)["QueueUrl"]
        return count, url

    def _batches(self, what: str, call: Callable[..., Any], entries: list[dict[str, Any]]) -> None:
        """Run a batch call per chunk of 10 entries; every chunk is tried even if an earlier one had rejects.

        Entries SQS failed on its side are retried; entries rejected as the sender's fault
        (a stale receipt handle, say) are collected and raised together at the end.
        """
        rejected: list[dict[str, Any]] = []
        for start in range(0, len(entries), MAX_BATCH):
            rejected.extend(self._batch(what, call, entries[start : start + MAX_BATCH]))
        if rejected:
            reasons = "; ".join(f"{f.get('Code')}: {f.get('Message', '')}" for f in rejected[:3])
            raise TransportError(f"{what} on queue {self.name} rejected {len(rejected)} of {len(entries)} entries: "
                                 f"{reasons}")

    def _batch(self, what: str, call: Callable[..., Any], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One batch call; retries the entries that failed on SQS's side, returns those rejected as ours."""
        pending = {entry["Id"]: entry for entry in entries}
        rejected: list[dict[str, Any]] = []

        def attempt() -> None:
            response = call(QueueUrl=self.url, Entries=list(pending.values()))
            for ok in response.get("Successful", []):
                pending.pop(ok["Id"], None)
            failed = response.get("Failed", [])
            for failure in failed:
                if failure.get("SenderFault"):
                    pending.pop(failure["Id"], None)
                    rejected.append(failure)
            transient = [f for f in failed if not f.get("SenderFault")]
            if transient:
                raise RetryableError(
                    f"{len(transient)} of {len(entries)} entries failed: "
                    + "; ".join(f"{f.get('Code')}: {f.get('Message', '')}" for f in transient[:3])
                )

        self._retry.call(f"{what} batch of {len(entries)} on {self.name}", attempt)
        return rejected


def parse_max_receive_count(policy: str) -> int:
    """``maxReceiveCount`` of a RedrivePolicy (JSON); ValueError naming the policy where it has no usable one."""
    try:
        count = int(json.loads(policy)["maxReceiveCount"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"its RedrivePolicy has no usable maxReceiveCount ({policy!r})") from exc
    if not 1 <= count <= 1000:
        raise ValueError(f"its RedrivePolicy has maxReceiveCount {count}; SQS allows 1 to 1000")
    return count


def is_missing_queue(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error it was raised from) says the queue does not exist (any more)."""
    seen: BaseException | None = exc
    while seen is not None:
        if error_code(seen) in NONEXISTENT_QUEUE_CODES:
            return True
        seen = seen.__cause__
    return False


def _check_visibility(seconds: int) -> int:
    if not 0 <= seconds <= MAX_VISIBILITY_S:
        raise TransportError(f"visibility timeout {seconds} s is outside 0..{MAX_VISIBILITY_S} s, the SQS limit")
    return int(seconds)


def _chunks_by_size(bodies: list[str]) -> list[list[str]]:
    """Split bodies into batches of at most MAX_BATCH entries and MAX_MESSAGE_BYTES in total."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for body in bodies:
        n = len(body.encode("utf-8"))
        if current and (len(current) == MAX_BATCH or size + n > MAX_MESSAGE_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(body)
        size += n
    if current:
        chunks.append(current)
    return chunks


def ensure_tile_queues(
    sqs_client: Any,
    *,
    name: str,
    dead_letter_name: str,
    visibility_timeout_s: int,
    max_receive_count: int,
    retry: RetryPolicy = DEFAULT_POLICY,
) -> tuple[str, str]:
    """Create, or reuse and update, the tile queue and its dead-letter queue; returns (queue_url, dlq_url).

    A message received ``max_receive_count`` times without being deleted moves to the DLQ on
    its next receive, so a tile that keeps failing stops circulating and can be reported.
    """
    if not 1 <= max_receive_count <= 1000:
        raise TransportError(f"max_receive_count = {max_receive_count} is outside 1..1000, the SQS limit")
    dlq_url = _create_or_update(sqs_client, dead_letter_name, {"MessageRetentionPeriod": str(DEAD_LETTER_RETENTION_S)},
                                retry=retry)
    dlq_arn = retry.call(
        f"get attributes of {dead_letter_name}", sqs_client.get_queue_attributes,
        QueueUrl=dlq_url, AttributeNames=["QueueArn"],
    )["Attributes"]["QueueArn"]
    attributes = {
        "VisibilityTimeout": str(_check_visibility(visibility_timeout_s)),
        "MessageRetentionPeriod": str(QUEUE_RETENTION_S),
        "ReceiveMessageWaitTimeSeconds": str(MAX_WAIT_S),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}),
    }
    queue_url = _create_or_update(sqs_client, name, attributes, retry=retry)
    log.info("tile queue %s (dead letters to %s after %d receives)", name, dead_letter_name, max_receive_count)
    return queue_url, dlq_url


def create_results_queue(sqs_client: Any, *, prefix: str, job: str, retry: RetryPolicy = DEFAULT_POLICY) -> str:
    """Create the results queue of one job, named ``{prefix}-{job}``; returns its URL."""
    return _create_or_update(sqs_client, f"{prefix}-{job}", {"MessageRetentionPeriod": str(RESULTS_RETENTION_S)},
                             retry=retry)


def delete_queue(sqs_client: Any, url: str, *, retry: RetryPolicy = DEFAULT_POLICY) -> None:
    """Delete a queue; one that is already gone is fine."""

    def attempt() -> None:
        try:
            sqs_client.delete_queue(QueueUrl=url)
        except ClientError as exc:
            if error_code(exc) not in NONEXISTENT_QUEUE_CODES:
                raise
            log.debug("queue %s was already deleted", url)

    retry.call(f"delete queue {url}", attempt)


def _create_or_update(sqs_client: Any, name: str, attributes: dict[str, str], *, retry: RetryPolicy) -> str:
    """CreateQueue is idempotent for equal attributes; for different ones, update the existing queue."""

    def attempt() -> str:
        try:
            return str(sqs_client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])
        except ClientError as exc:
            if error_code(exc) not in QUEUE_EXISTS_CODES:
                raise
        url = str(sqs_client.get_queue_url(QueueName=name)["QueueUrl"])
        sqs_client.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        log.info("queue %s existed with other attributes; updated them", name)
        return url

    return retry.call(f"create queue {name}", attempt)


__all__ = [
    "MAX_BATCH",
    "MAX_MESSAGE_BYTES",
    "MAX_RECEIVE",
    "MAX_VISIBILITY_S",
    "MAX_WAIT_S",
    "Queue",
    "Received",
    "create_results_queue",
    "delete_queue",
    "ensure_tile_queues",
    "is_missing_queue",
]
