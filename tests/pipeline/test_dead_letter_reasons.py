"""The orchestrator's view of the dead-letter queue: this job's tiles are found behind other jobs'
dead letters, and a tile whose message a worker rejected is given up with the worker's reason.

The dead-letter queue is shared by every job of a deployment and keeps messages for 14 days;
a worker that rejects a message (one from another release, say) only logs why. The summary
must still say why the tile failed, not just "moved to the dead-letter queue".
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto import mock_aws

from am.collector import ResultCollector
from am.dataset import DatasetLayout
from am.errors import InputError, JobFailed
from am.messages import MESSAGE_VERSION, TileMessage, TileResult
from am.tracking import JobTracker
from am.transport.clients import ClientFactory
from am.transport.queue import Queue
from am.transport.storage import Storage

JOB = "20261124-101500-abc123"
OLD_JOB = "20261101-090000-0ld0ld"


def _message(job: str, tile: int) -> str:
    key = f"{job}/g/{tile:04d}.npy"
    return TileMessage(job=job, group="g", tiles=(tile,), input=key, output=key, model="m",
                       reply=f"http://127.0.0.1:1/123456789012/am-segm-results-{job}").to_json()


@pytest.fixture
def sqs(fake_aws_credentials: None) -> Iterator[object]:
    with mock_aws():
        yield ClientFactory(region="us-east-1").sqs()


@pytest.fixture
def dlq(sqs) -> Queue:
    return Queue(sqs, sqs.create_queue(QueueName="am-segm-tiles-dlq")["QueueUrl"])


def _collector(tracker: JobTracker, tmp_path: Path, *, worker_logs: Path | None = None) -> ResultCollector:
    return ResultCollector(job_id=JOB, tracker=tracker, storage=Storage(ClientFactory(region="us-east-1").s3()),
                      bucket="out", layout=DatasetLayout(tmp_path / "ds"), tile_size=64, on_done=lambda _n: None,
                      worker_logs=worker_logs)


def _send(sqs, queue: Queue, body: str) -> str:
    """Put a dead letter on the queue; its message id."""
    return sqs.send_message(QueueUrl=queue.url, MessageBody=body)["MessageId"]


def test_this_jobs_dead_letter_behind_many_of_other_jobs_is_found_and_deleted(sqs, dlq, tmp_path):
    dlq.send_many([_message(OLD_JOB, tile) for tile in range(30)])
    dlq.send_many([_message(JOB, 7)])
    tracker = JobTracker(["g/0007", "g/0008"], max_attempts=3)
    collector = _collector(tracker, tmp_path)

    collector.handle_dead_letters(dlq)
    assert "g/0007" in tracker.dead, "this job's dead letter behind 30 of another job's was not seen"
    assert "moved to the dead-letter queue after 3 receives" in tracker.dead["g/0007"]
    assert tracker.pending == {"g/0008"}
    assert dlq.depth()["visible"] == 31, "the scan did not make the dead letters visible again"

    assert collector.delete_dead_letters(dlq) == 1
    left = [json.loads(m.body)["job"] for m in dlq.receive(max_messages=10, wait_s=0)]
    assert left and set(left) == {OLD_JOB}
    assert dlq.depth()["visible"] + dlq.depth()["in_flight"] == 30


def test_a_rejected_message_is_given_up_with_the_reason_from_the_local_worker_log(sqs, dlq, tmp_path):
    message_id = _send(sqs, dlq, _message(JOB, 3))
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker-0.log").write_text(
        "10:00:00 INFO am.worker.worker: worker local-1-0 ready\n"
        f"10:00:01 ERROR am.worker.worker: rejected message {message_id} (receive 3): tile message has version 2; "
        "this build reads version 3\n")
    tracker = JobTracker(["g/0003"], max_attempts=3)
    _collector(tracker, tmp_path, worker_logs=logs).handle_dead_letters(dlq)

    reason = tracker.dead["g/0003"]
    assert "a worker rejected its message: tile message has version 2; this build reads version 3" in reason
    assert str(logs / "worker-0.log") in reason


def test_a_message_no_local_log_names_was_held_by_workers_that_stopped(sqs, dlq, tmp_path):
    # A worker killed while it held the tile (AM_MAX_RECEIVE_COUNT=1): nothing to search the logs for.
    _send(sqs, dlq, _message(JOB, 3))
    logs = tmp_path / "logs"
    logs.mkdir()
    for index in range(2):
        (logs / f"worker-{index}.log").write_text("10:00:00 INFO am.worker.worker: worker ready\n")
    tracker = JobTracker(["g/0003"], max_attempts=3)
    _collector(tracker, tmp_path, worker_logs=logs).handle_dead_letters(dlq)

    reason = tracker.dead["g/0003"]
    assert f"nor rejected it (none of the 2 worker log(s) in {logs} names it)" in reason
    assert "stopped before they could report (killed, or crashed)" in reason and "search" not in reason


def test_a_rejected_message_without_a_log_to_read_says_what_to_search_for(sqs, dlq, tmp_path):
    message_id = _send(sqs, dlq, _message(JOB, 3))
    tracker = JobTracker(["g/0003"], max_attempts=3)
    _collector(tracker, tmp_path).handle_dead_letters(dlq)

    reason = tracker.dead["g/0003"]
    assert "no worker reported a failure for it: a worker rejected its message" in reason
    assert f"'rejected message {message_id}'" in reason and "CloudWatch" in reason


def test_a_tile_that_failed_on_a_worker_is_given_up_with_that_error_not_a_rejection(sqs, dlq, tmp_path):
    _send(sqs, dlq, _message(JOB, 3))
    tracker = JobTracker(["g/0003"], max_attempts=3)
    tracker.failed("g/0003", attempt=2, error="input: the object is damaged")
    _collector(tracker, tmp_path).handle_dead_letters(dlq)

    reason = tracker.dead["g/0003"]
    assert "input: the object is damaged" in reason and "rejected" not in reason


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_a_last_attempt_dead_lettered_before_its_report_is_given_up_with_the_workers_error(sqs, dlq, tmp_path,
                                                                                            max_attempts):
    # The worker moves the message to the dead-letter queue, then reports: a scan between the two.
    _send(sqs, dlq, _message(JOB, 3))
    results = Queue(sqs, sqs.create_queue(QueueName=f"am-segm-results-{JOB}")["QueueUrl"])
    results.send_many([TileResult(job=JOB, group="g", tiles=(3,), status="failed", attempt=max_attempts,
                                  worker="w-1", error="input: the object is not a readable tile array").to_json()])
    tracker = JobTracker(["g/0003", "g/0004"], max_attempts=max_attempts)
    if max_attempts > 1:
        tracker.failed("g/0003", attempt=max_attempts - 1, error="input: an earlier attempt's error")
    _collector(tracker, tmp_path).handle_dead_letters(dlq, results=results)

    assert tracker.dead["g/0003"] == (f"failed {max_attempts} times, last error: input: the object is not a "
                                      "readable tile array")
    assert tracker.pending == {"g/0004"}
    assert results.depth()["visible"] == 0


def test_a_dead_letter_with_no_report_waiting_is_still_given_up(sqs, dlq, tmp_path):
    _send(sqs, dlq, _message(JOB, 3))
    results = Queue(sqs, sqs.create_queue(QueueName=f"am-segm-results-{JOB}")["QueueUrl"])
    tracker = JobTracker(["g/0003"], max_attempts=3)
    _collector(tracker, tmp_path).handle_dead_letters(dlq, results=results)

    assert tracker.dead["g/0003"].startswith("moved to the dead-letter queue after 3 receives without success")


def _other_version_report(status: str, *, attempt: int, error: str = "") -> str:
    return json.dumps({"v": MESSAGE_VERSION + 1, "job": JOB, "group": "g", "tiles": [3, 4], "status": status,
                       "attempt": attempt, "worker": "w", "error": error, "compute_s": 0.0, "new_field": 1})


def test_a_failure_reported_by_a_worker_of_another_release_reaches_the_summary(tmp_path):
    tracker = JobTracker(["g/0003", "g/0004", "g/0005"], max_attempts=3)
    collector = _collector(tracker, tmp_path)
    reason = f"tile message has version {MESSAGE_VERSION}; this build reads version {MESSAGE_VERSION + 1}"
    for attempt in (1, 2, 3):
        collector.handle_results([_other_version_report("failed", attempt=attempt, error=reason)])

    assert sorted(tracker.dead) == ["g/0003", "g/0004"] and tracker.pending == {"g/0005"}
    dead = tracker.dead["g/0003"]
    assert dead.startswith("failed 3 times, last error: " + reason)
    assert f"writes message version {MESSAGE_VERSION + 1}" in dead and "same release" in dead


def test_done_from_a_worker_of_another_release_gives_the_tiles_up_instead_of_waiting_for_ever(tmp_path):
    tracker = JobTracker(["g/0003", "g/0004"], max_attempts=3)
    _collector(tracker, tmp_path).handle_results([_other_version_report("done", attempt=1)])
    assert not tracker.pending and "its masks are not read" in tracker.dead["g/0004"]


def test_reports_that_are_not_this_jobs_or_not_reports_are_still_ignored(tmp_path):
    tracker = JobTracker(["g/0003"], max_attempts=3)
    collector = _collector(tracker, tmp_path)
    other_job = json.loads(_other_version_report("failed", attempt=3, error="x"))
    other_job["job"] = OLD_JOB
    same_version_bad = TileResult(job=JOB, group="g", tiles=(3,), status="failed", attempt=3, worker="w").to_json()
    collector.handle_results([json.dumps(other_job), "not json", json.dumps([1, 2]),
                              same_version_bad.replace('"attempt": 3', '"attempt": "3"')])
    assert tracker.pending == {"g/0003"} and not tracker.dead


@pytest.mark.parametrize("error,kept", [(JobFailed("1 of 1 tile(s) failed"), True), (KeyboardInterrupt(), False),
                                        (InputError("bad tile file"), False)], ids=["tiles-failed", "ctrl-c", "input"])
def test_the_local_worker_logs_outlive_a_run_whose_tiles_failed(error, kept):
    """The reason a tile failed may be only in a worker's log, which the error names: it must still exist."""
    from am.orchestrator import _worker_log_folder

    with pytest.raises(type(error)), _worker_log_folder() as folder:
        (folder / "worker-0.log").write_text("rejected message m-1 (receive 3): version\n")
        raise error
    assert folder.is_dir() == kept
    if kept:
        shutil.rmtree(folder)


def test_the_local_worker_logs_go_when_every_log_stayed_empty():
    """Empty logs explain nothing; keeping them would leave a folder behind on every failed run."""
    from am.orchestrator import _worker_log_folder

    with pytest.raises(JobFailed), _worker_log_folder() as folder:
        (folder / "worker-0.log").write_text("")
        (folder / "worker-1.log").write_text("")
        raise JobFailed("1 of 1 tile(s) failed")
    assert not folder.exists()


class _SampledQueue(Queue):
    """A queue that answers a short poll as real SQS may, from a sample of its servers: empty, while it
    holds messages. A long poll asks every server and gets them."""

    def receive(self, *, max_messages: int = 10, wait_s: float = 20, visibility_timeout: int | None = None):
        if wait_s == 0:
            return []
        return super().receive(max_messages=max_messages, wait_s=wait_s, visibility_timeout=visibility_timeout)


def test_the_jobs_last_scan_finds_dead_letters_a_short_poll_would_miss(sqs, dlq, tmp_path):
    dlq.send_many([_message(JOB, 7), _message(OLD_JOB, 1)])
    collector = _collector(JobTracker(["g/0007"], max_attempts=3), tmp_path)

    assert collector.delete_dead_letters(_SampledQueue(sqs, dlq.url)) == 1
    left = dlq.receive(max_messages=10, wait_s=0)
    assert [json.loads(m.body)["job"] for m in left] == [OLD_JOB], "this job's dead letter was left behind"
