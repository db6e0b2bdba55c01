"""Queue batching, receive counts, redrive to the dead-letter queue, queue lifecycle (moto)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.stub import Stubber

from am.errors import TransportError
from am.transport.queue import (
    DEAD_LETTER_RETENTION_S,
    MAX_MESSAGE_BYTES,
    QUEUE_RETENTION_S,
    Queue,
    create_results_queue,
    delete_queue,
    ensure_tile_queues,
)

from .conftest import FAST_RETRY


def _tile_queues(sqs: Any, *, max_receive_count: int = 3) -> tuple[str, str]:
    return ensure_tile_queues(sqs, name="tiles", dead_letter_name="tiles-dlq", visibility_timeout_s=30,
                              max_receive_count=max_receive_count)


class CountingClient:
    """Passes calls to a real client and records each batch call's entry count."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.batches: list[int] = []

    def send_message_batch(self, **kwargs: Any) -> Any:
        self.batches.append(len(kwargs["Entries"]))
        return self._client.send_message_batch(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_send_many_sends_in_chunks_of_ten(sqs: Any) -> None:
    url, _ = _tile_queues(sqs)
    counting = CountingClient(sqs)
    Queue(counting, url).send_many([f"body-{i}" for i in range(25)])
    assert counting.batches == [10, 10, 5]
    assert Queue(sqs, url).depth() == {"visible": 25, "in_flight": 0}


def test_send_many_splits_batches_by_total_size(sqs: Any) -> None:
    url, _ = _tile_queues(sqs)
    counting = CountingClient(sqs)
    big = "x" * (MAX_MESSAGE_BYTES // 3 + 1)
    Queue(counting, url).send_many([big] * 4)
    assert counting.batches == [2, 2]


def test_send_many_refuses_a_body_over_the_limit(sqs: Any) -> None:
    url, _ = _tile_queues(sqs)
    with pytest.raises(TransportError, match="exceeds the SQS limit"):
        Queue(sqs, url).send_many(["x" * (MAX_MESSAGE_BYTES + 1)])


def test_send_many_retries_only_entries_that_failed() -> None:
    import boto3

    client = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/tiles"
    with Stubber(client) as stub:
        stub.add_response(
            "send_message_batch",
            {"Successful": [{"Id": "0", "MessageId": "m0", "MD5OfMessageBody": "x"}],
             "Failed": [{"Id": "1", "SenderFault": False, "Code": "InternalError", "Message": "try again"}]},
            {"QueueUrl": url, "Entries": [{"Id": "0", "MessageBody": "a"}, {"Id": "1", "MessageBody": "b"}]},
        )
        stub.add_response(
            "send_message_batch",
            {"Successful": [{"Id": "1", "MessageId": "m1", "MD5OfMessageBody": "x"}], "Failed": []},
            {"QueueUrl": url, "Entries": [{"Id": "1", "MessageBody": "b"}]},
        )
        Queue(client, url, retry=FAST_RETRY).send_many(["a", "b"])
        stub.assert_no_pending_responses()


def test_send_many_raises_when_entries_keep_failing() -> None:
    import boto3

    client = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/tiles"
    failed = {"Successful": [],
              "Failed": [{"Id": "0", "SenderFault": False, "Code": "InternalError", "Message": "down"}]}
    with Stubber(client) as stub:
        for _ in range(FAST_RETRY.attempts):
            stub.add_response("send_message_batch", failed)
        with pytest.raises(TransportError, match=r"send batch of 1 on tiles failed 4 time\(s\).*InternalError"):
            Queue(client, url, retry=FAST_RETRY).send_many(["a"])


def test_send_many_does_not_retry_sender_faults() -> None:
    import boto3

    client = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/tiles"
    with Stubber(client) as stub:
        stub.add_response("send_message_batch", {
            "Successful": [],
            "Failed": [{"Id": "0", "SenderFault": True, "Code": "InvalidMessageContents", "Message": "bad"}]})
        with pytest.raises(TransportError, match="rejected 1 of 1 entries: InvalidMessageContents"):
            Queue(client, url, retry=FAST_RETRY).send_many(["a"])
        stub.assert_no_pending_responses()


def test_receive_reports_receive_count_and_delete_many_removes(sqs: Any) -> None:
    url, _ = _tile_queues(sqs)
    queue = Queue(sqs, url)
    queue.send_many([f"m{i}" for i in range(12)])
    got = []
    while len(got) < 12:
        batch = queue.receive(max_messages=10, wait_s=0, visibility_timeout=30)
        assert batch and len(batch) <= 10
        got.extend(batch)
    assert sorted(r.body for r in got) == sorted(f"m{i}" for i in range(12))
    assert all(r.receive_count == 1 and r.message_id for r in got)
    assert queue.depth() == {"visible": 0, "in_flight": 12}
    queue.delete_many([r.receipt_handle for r in got])
    assert queue.depth() == {"visible": 0, "in_flight": 0}


def test_change_visibility_releases_and_counts_receives(sqs: Any) -> None:
    url, _ = _tile_queues(sqs, max_receive_count=5)
    queue = Queue(sqs, url)
    queue.send_many(["a", "b"])
    first = queue.receive(wait_s=0)
    assert len(first) == 2
    queue.change_visibility(first[0].receipt_handle, 0)
    queue.change_visibility_many([first[1].receipt_handle], 0)
    again = queue.receive(wait_s=0)
    assert sorted(r.body for r in again) == ["a", "b"]
    assert {r.receive_count for r in again} == {2}


def test_receive_rejects_out_of_range_arguments(sqs: Any) -> None:
    url, _ = _tile_queues(sqs)
    queue = Queue(sqs, url)
    with pytest.raises(TransportError, match="max_messages = 11"):
        queue.receive(max_messages=11)
    with pytest.raises(TransportError, match="wait_s = 21"):
        queue.receive(wait_s=21)
    with pytest.raises(TransportError, match="visibility timeout 43201"):
        queue.change_visibility("h", 43201)


def test_ensure_tile_queues_sets_redrive_and_retention(sqs: Any) -> None:
    url, dlq_url = _tile_queues(sqs, max_receive_count=3)
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    dlq_attrs = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
    policy = json.loads(attrs["RedrivePolicy"])
    assert policy["deadLetterTargetArn"] == dlq_attrs["QueueArn"]
    assert int(policy["maxReceiveCount"]) == 3
    assert attrs["VisibilityTimeout"] == "30"
    assert int(attrs["MessageRetentionPeriod"]) == QUEUE_RETENTION_S
    assert int(dlq_attrs["MessageRetentionPeriod"]) == DEAD_LETTER_RETENTION_S > QUEUE_RETENTION_S


def test_ensure_tile_queues_reuses_and_updates(sqs: Any) -> None:
    url, dlq_url = _tile_queues(sqs, max_receive_count=3)
    url2, dlq_url2 = ensure_tile_queues(sqs, name="tiles", dead_letter_name="tiles-dlq", visibility_timeout_s=90,
                                        max_receive_count=5)
    assert (url2, dlq_url2) == (url, dlq_url)
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "90"
    assert int(json.loads(attrs["RedrivePolicy"])["maxReceiveCount"]) == 5


def test_message_moves_to_dead_letter_queue_after_max_receives(sqs: Any) -> None:
    url, dlq_url = _tile_queues(sqs, max_receive_count=3)
    queue, dlq = Queue(sqs, url), Queue(sqs, dlq_url)
    queue.send_many(["poison"])
    counts = []
    for _ in range(3):
        (received,) = queue.receive(wait_s=0)
        counts.append(received.receive_count)
        queue.change_visibility(received.receipt_handle, 0)
    assert counts == [1, 2, 3]
    assert queue.receive(wait_s=0) == []
    (dead,) = dlq.receive(wait_s=0)
    assert dead.body == "poison"


def test_results_queue_lifecycle(sqs: Any) -> None:
    url = create_results_queue(sqs, prefix="am-segm-results", job="j1")
    assert url.endswith("/am-segm-results-j1")
    assert create_results_queue(sqs, prefix="am-segm-results", job="j1") == url
    delete_queue(sqs, url)
    delete_queue(sqs, url)  # already gone is fine
    assert "QueueUrls" not in sqs.list_queues(QueueNamePrefix="am-segm-results")


def test_delete_many_deletes_every_good_handle_and_reports_bad_ones(sqs: Any) -> None:
    url, _ = _tile_queues(sqs)
    queue = Queue(sqs, url, retry=FAST_RETRY)
    queue.send_many([f"m{i}" for i in range(15)])
    handles = []
    while len(handles) < 15:
        handles.extend(r.receipt_handle for r in queue.receive(wait_s=0))
    handles.insert(3, "not-a-receipt-handle")
    with pytest.raises(TransportError, match="delete on queue tiles rejected 1 of 16 entries: ReceiptHandleIsInvalid"):
        queue.delete_many(handles)
    assert queue.depth() == {"visible": 0, "in_flight": 0}
