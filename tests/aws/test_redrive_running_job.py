"""``am.scale redrive`` rescues a tile of a job that is still running, as the README says.

A tile that used up its receives is given up at once (the run names it at the end), but its
message stays in the dead-letter queue: moved back after the cause is fixed, the tile's mask
still counts while other tiles keep the job going. When the job ends, it deletes its own dead
letters; a late report after that is only a duplicate.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Iterator, Mapping

import numpy as np
import pytest

import am.job
from am.backends import Backend, open_aws_backend
from am.dataset import DatasetLayout
from am.errors import JobFailed
from am.job import Job, raise_for_lost_tiles
from am.messages import TileMessage, TileResult, tile_name, tiles_key
from am.scale.__main__ import main as scale
from am.settings import Settings
from am.tilepack import pack_masks
from am.transport.queue import Queue, create_results_queue
from am.transport.storage import Storage
from tests.aws.conftest import REGION, STACK, client

JOB = "20261203-130000-def456"
OTHER_JOB = "20261203-125900-aaa111"
SIZE = 64


class BusyLauncher:
    """Workers that stay alive: the test plays them by hand."""

    def start(self, count: int, environment: Mapping[str, str]) -> None:
        pass

    def alive(self) -> int:
        return 1

    def stop(self) -> None:
        pass


@pytest.fixture
def job(aws, stack, monkeypatch, tmp_path) -> Iterator[Job]:
    """A job on the stack, one tile per message, whose every collect also looks at the dead-letter queue."""
    monkeypatch.setattr(am.job, "HEALTH_CHECK_EVERY_S", 0.0)
    monkeypatch.setattr(importlib.import_module("am.scale.redrive"), "RECEIVE_WAIT_S", 0)
    uri = f"s3://{stack['ModelBucket']}/models/m.pt"
    client("s3").put_object(Bucket=stack["ModelBucket"], Key="models/m.pt", Body=b"checkpoint")
    settings = Settings(backend="aws", stack_name=STACK, region=REGION, tiles_per_message=1, tile_size=SIZE,
                        tile_overlap=16)
    with open_aws_backend(settings, model=uri) as opened:
        backend = Backend(opened.name, opened.clients, BusyLauncher(), opened.queue_url,
                          opened.dead_letter_queue_url, opened.input_bucket, opened.output_bucket, opened.model,
                          max_receive_count=opened.max_receive_count)
        results = create_results_queue(backend.clients.sqs(), prefix=settings.results_queue_prefix, job=JOB)
        yield Job(backend, results_url=results, layout=DatasetLayout(tmp_path / "ds"), settings=settings,
                  job_id=JOB, show_progress=False)


def _queues(job: Job) -> tuple[Queue, Queue, Queue]:
    sqs = job.backend.clients.sqs()
    return Queue(sqs, job.backend.queue_url), Queue(sqs, job.results_url), Queue(sqs, job.backend.dead_letter_queue_url)


def _send(job: Job, *tiles: int) -> None:
    job.send("g", [(tile, np.full((SIZE, SIZE), tile, np.uint8)) for tile in tiles])
    job._finish_sending()


def _fail_until_dead_lettered(job: Job, tile: int) -> None:
    """What a worker failing on the tile does: report each failure, until SQS moves the message away."""
    tiles, results, _ = _queues(job)
    while received := tiles.receive(max_messages=1, wait_s=0, visibility_timeout=0):
        [message] = received
        assert TileMessage.from_json(message.body).tiles == (tile,)
        results.send_many([TileResult(job=JOB, group="g", tiles=(tile,), status="failed", worker="w",
                                      attempt=message.receive_count, error="CUDA out of memory").to_json()])
        job.collect()
    job.collect()


def _segment_next(job: Job) -> None:
    """What a worker that succeeds does: masks to the output bucket, then a done report."""
    tiles, results, _ = _queues(job)
    [received] = tiles.receive(max_messages=1, wait_s=0)
    message = TileMessage.from_json(received.body)
    masks = np.full((1, SIZE, SIZE), 255, np.uint8)
    Storage(job.backend.clients.s3()).put_bytes(job.backend.output_bucket, tiles_key(JOB, "g", message.tiles),
                                                pack_masks(masks))
    results.send_many([TileResult(job=JOB, group="g", tiles=message.tiles, status="done", worker="w",
                                  attempt=received.receive_count).to_json()])
    tiles.delete_many([received.receipt_handle])
    job.collect()


def _redrive(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert scale(["--stack", STACK, "--region", REGION, "redrive", *args]) == 0
    return out.getvalue()


def test_a_redriven_tile_of_a_running_job_completes(job) -> None:
    _send(job, 0)
    _fail_until_dead_lettered(job, 0)
    assert list(job.tracker.dead) == [tile_name("g", 0)]
    assert "moved 1 message(s)" in _redrive(), "the job took its tile's message off the dead-letter queue"

    _segment_next(job)  # the cause is fixed: the re-driven tile succeeds while the job still runs
    assert job.tracker.completed == {tile_name("g", 0)} and job.tracker.dead == {}
    assert job.tracker.duplicates == 0
    _send(job, 1)
    job.seal()
    _segment_next(job)
    assert job.tracker.finished
    report = raise_for_lost_tiles(job.report())
    assert report.completed == 2 and report.dead == {}
    job.close(after_failure=False)


def test_an_ended_job_deletes_its_dead_letters_and_leaves_other_jobs(job) -> None:
    _, _, dead_letters = _queues(job)
    key = tiles_key(OTHER_JOB, "g", (5,))
    dead_letters.send_many([TileMessage(job=OTHER_JOB, group="g", tiles=(5,), input=key, output=key,
                                        model=job.backend.model,
                                        reply=job.results_url.replace(JOB, OTHER_JOB)).to_json()])
    _send(job, 0, 1)
    job.seal()
    _segment_next(job)
    _fail_until_dead_lettered(job, 1)
    assert job.tracker.finished and list(job.tracker.dead) == [tile_name("g", 1)]
    with pytest.raises(JobFailed, match="g/0001: failed 3 times, last error: CUDA out of memory"):
        raise_for_lost_tiles(job.report())
    assert dead_letters.depth()["visible"] == 2, "the job's own dead letter stays until it ends"

    job.close(after_failure=True)
    left = dead_letters.receive(max_messages=10, wait_s=0)
    assert [TileMessage.from_json(m.body).job for m in left] == [OTHER_JOB]


def test_a_late_report_after_the_job_finished_is_a_duplicate(job) -> None:
    _send(job, 0)
    job.seal()
    _fail_until_dead_lettered(job, 0)
    assert job.tracker.finished
    _redrive()
    _segment_next(job)
    assert job.tracker.completed == frozenset() and job.tracker.duplicates == 1
    assert list(job.tracker.dead) == [tile_name("g", 0)]
    job.close(after_failure=True)
