"""A tile that always fails (fault 3), dead letters, and duplicate delivery (fault 4).

The failing tile runs through the real command; the dead-letter and duplicate checks drive the
orchestrator's collector and a real worker in this process against a moto server, where each
delivery can be placed exactly.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from am.collector import ResultCollector
from am.dataset import DatasetLayout
from am.imageio import read_image
from am.messages import TileMessage, tile_name, tiles_key
from am.model_source import resolve_model
from am.prepare import prepare_group
from am.settings import load_settings
from am.tilepack import pack_masks, pack_tiles
from am.tracking import JobTracker
from am.transport.clients import ClientFactory
from am.transport.queue import Queue, create_results_queue, ensure_tile_queues
from am.transport.storage import Storage
from am.worker.worker import Worker

from .harness import assert_nothing_left, assert_same_as_undisturbed, make_dataset, mask_files, run_to_end

CORRUPT = b"\x89PNG\r\n\x1a\n" + b"\x00 these bytes are not an image" * 8


def test_damaged_tile_file_stops_the_run_naming_it_and_a_rerun_after_the_fix_finishes(tmp_path, tiny_model,
                                                                                      predictor):
    """A tile file spoiled between runs: the run stops naming the file and the fix, cleans up, and resumes later.

    (A message that keeps failing inside the workers is covered in-process by
    tests/pipeline/test_streaming.py, where the failure can be placed on one message exactly.)
    """
    dataset = make_dataset(tmp_path / "ds", {"g1": (400, 400)})
    # Prepare as the command would (same settings, same model identity), then spoil one tile.
    settings = load_settings({"model": str(tiny_model), "tile_size": 128, "tile_overlap": 32})
    _, model_id = resolve_model(settings, cache_dir=tmp_path / "cache")
    prepare_group(DatasetLayout(dataset), "g1", settings=settings, model_id=model_id)
    bad = dataset / "tiles" / "g1" / "source" / "0005.png"
    good_bytes = bad.read_bytes()
    bad.write_bytes(CORRUPT)

    failed = run_to_end(dataset, tiny_model, tmp_path, "--no-register")
    assert failed.proc.returncode == 1, failed.stderr[-4000:]
    assert f"tile file {bad} cannot be read" in failed.stderr, failed.stderr[-4000:]
    assert f"delete {bad.parent.parent} so that the next run cuts the group again" in failed.stderr
    assert not (dataset / "tiles_stitched" / "g1").exists(), "a stitched mask with a hole was presented"
    assert_nothing_left(failed)
    kept = len(mask_files(dataset, "g1"))  # masks of tiles sent before the damaged one are kept

    bad.write_bytes(good_bytes)
    again = run_to_end(dataset, tiny_model, tmp_path, "--no-register")
    assert again.proc.returncode == 0, again.stderr[-4000:]
    assert again.job_tiles() == [16 - kept] and f"{kept} reused" in again.stdout
    assert_same_as_undisturbed(dataset, "g1", predictor)


# --------------------------------------------------------------------------- in-process protocol

JOB = "20261124-101500-abc123"


class Deployment:
    """Buckets, tile queue with its dead-letter queue and a job's results queue on the test's moto server."""

    def __init__(self, endpoint: str, *, suffix: str) -> None:
        self.clients = ClientFactory(endpoint_url=endpoint)
        self.sqs = self.clients.sqs()
        self.storage = Storage(self.clients.s3(), threads=4)
        self.input_bucket, self.output_bucket = f"in-{suffix}", f"out-{suffix}"
        self.storage.ensure_bucket(self.input_bucket)
        self.storage.ensure_bucket(self.output_bucket)
        url, dlq_url = ensure_tile_queues(self.sqs, name=f"tiles-{suffix}", dead_letter_name=f"dlq-{suffix}",
                                          visibility_timeout_s=30, max_receive_count=3)
        self.queue, self.dlq = Queue(self.sqs, url), Queue(self.sqs, dlq_url)
        self.results = Queue(self.sqs, create_results_queue(self.sqs, prefix=f"results-{suffix}", job=JOB))

    def message(self, tile: int | tuple[int, ...], *, job: str = JOB, model: str = "tiny") -> TileMessage:
        tiles = (tile,) if isinstance(tile, int) else tile
        key = tiles_key(job, "g", tiles)
        reply = self.results.url if job == JOB else self.results.url.rsplit("-", 4)[0] + f"-{job}"
        return TileMessage(job=job, group="g", tiles=tiles, input=key, output=key, model=model, reply=reply)

    def collector(self, tmp_path: Path, tracker: JobTracker, done: list[int]) -> ResultCollector:
        return ResultCollector(job_id=JOB, tracker=tracker, storage=self.storage, bucket=self.output_bucket,
                          layout=DatasetLayout(tmp_path / "ds"), tile_size=128, on_done=done.append)

    def run_worker(self, predictor) -> None:
        worker = Worker(self.queue, self.storage, lambda uri: predictor, input_bucket=self.input_bucket,
                        output_bucket=self.output_bucket, results=partial(Queue, self.sqs), batch_size=4,
                        idle_exit_s=1.0, visibility_timeout_s=30, worker_id="w-test")
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "worker did not go idle"

    def drain_results(self) -> list[str]:
        bodies = []
        while batch := self.results.receive(wait_s=0):
            bodies.extend(m.body for m in batch)
            self.results.delete_many([m.receipt_handle for m in batch])
        return bodies


def test_dead_lettered_tile_is_given_up_by_name_and_other_jobs_letters_are_left(moto_server, tmp_path):
    """A message that used up its receives moves to the DLQ; the orchestrator names its tile and stops waiting."""
    deployment = Deployment(moto_server, suffix="dlq")
    deployment.queue.send_many([deployment.message((7, 9)).to_json(),
                                deployment.message(1, job="other-job").to_json()])
    for _ in range(3):  # three receives that never delete: what a worker failing on the tile does
        for received in deployment.queue.receive(max_messages=10, wait_s=1):
            deployment.queue.change_visibility(received.receipt_handle, 0)
    assert deployment.queue.receive(max_messages=10, wait_s=1) == []  # the 4th receive moved both away

    tracker = JobTracker([tile_name("g", 7), tile_name("g", 8), tile_name("g", 9)], max_attempts=3)
    deployment.collector(tmp_path, tracker, []).handle_dead_letters(deployment.dlq)

    reason = "moved to the dead-letter queue after 3 receives without success"
    assert set(tracker.dead) == {"g/0007", "g/0009"}
    # No worker reported a failure for them: the reason says so and what to search the worker logs for.
    assert all(text.startswith(f"{reason} (no worker reported a failure for it") and "'rejected message " in text
               for text in tracker.dead.values()), tracker.dead
    assert tracker.pending == {"g/0008"}
    left = deployment.dlq.receive(max_messages=10, wait_s=1)
    # The job's own letters stay until its clean-up, so that am.scale redrive can still rescue a tile.
    assert sorted(TileMessage.from_json(m.body).job for m in left) == sorted([JOB, "other-job"])


def test_duplicate_delivery_writes_identical_output_and_counts_once(moto_server, tmp_path, predictor):
    """Fault 4: the same tile message delivered twice gives the same mask bytes and one completed tile."""
    deployment = Deployment(moto_server, suffix="dup")
    tile = np.random.default_rng(4).integers(0, 256, (128, 128), dtype=np.uint8)
    key = tiles_key(JOB, "g", (3,))
    deployment.storage.put_bytes(deployment.input_bucket, key, pack_tiles(tile[None]))
    tracker = JobTracker([tile_name("g", 3)], max_attempts=3)
    done: list[int] = []
    collector = deployment.collector(tmp_path, tracker, done)
    body = deployment.message(3).to_json()

    deployment.queue.send_many([body])
    deployment.run_worker(predictor)
    first_object = deployment.storage.get_bytes(deployment.output_bucket, key)
    collector.handle_results(deployment.drain_results())
    mask_path = DatasetLayout(tmp_path / "ds").tile_mask("g", 3)
    first_file = mask_path.read_bytes()

    deployment.queue.send_many([body])  # the same message again: at-least-once delivery
    deployment.run_worker(predictor)
    second_object = deployment.storage.get_bytes(deployment.output_bucket, key)
    collector.handle_results(deployment.drain_results())

    assert second_object == first_object
    assert mask_path.read_bytes() == first_file
    assert np.array_equal(read_image(mask_path), predictor.predict(tile[None])[0])
    assert tracker.completed == {"g/0003"} and tracker.finished
    assert tracker.duplicates == 1 and done == [1], "the duplicate was counted as a second completed tile"


@pytest.mark.parametrize("order", ["done then failed", "failed then done"])
def test_late_failure_report_of_a_finished_tile_changes_nothing(moto_server, tmp_path, order):
    """A duplicate delivery may fail where the first succeeded: the finished tile stays finished."""
    from am.messages import TileResult

    deployment = Deployment(moto_server, suffix=f"late{len(order)}{order[0]}")
    tracker = JobTracker([tile_name("g", 2)], max_attempts=1)
    done_report = TileResult(job=JOB, group="g", tiles=(2,), status="done", attempt=1, worker="a").to_json()
    failed_report = TileResult(job=JOB, group="g", tiles=(2,), status="failed", attempt=1, worker="b",
                               error="input: gone").to_json()
    tile = np.zeros((1, 128, 128), dtype=np.uint8)
    deployment.storage.put_bytes(deployment.output_bucket, tiles_key(JOB, "g", (2,)), pack_masks(tile))
    collector = deployment.collector(tmp_path, tracker, [])
    reports = [done_report, failed_report] if order == "done then failed" else [failed_report, done_report]
    for report in reports:
        collector.handle_results([report])
    if order == "done then failed":
        assert tracker.completed == {"g/0002"} and tracker.dead == {}
    else:
        # The failure used the tile's only attempt: it is given up, and a later success is a duplicate.
        assert tracker.dead and tracker.completed == frozenset() and tracker.duplicates == 1


@pytest.mark.parametrize("order", ["done then failed", "failed then done"])
def test_a_success_and_a_last_failure_in_one_receive_keep_the_mask(moto_server, tmp_path, order):
    """A duplicate delivery may bring the job's last tile's ``done`` and its last-attempt ``failed`` together:
    the mask already written is collected, whatever their order, and the job does not end with it given up."""
    from am.messages import TileResult

    deployment = Deployment(moto_server, suffix=f"one{len(order)}{order[0]}")
    tracker = JobTracker([tile_name("g", 5)], max_attempts=3)
    done_report = TileResult(job=JOB, group="g", tiles=(5,), status="done", attempt=2, worker="a").to_json()
    failed_report = TileResult(job=JOB, group="g", tiles=(5,), status="failed", attempt=3, worker="b",
                               error="input: SlowDown").to_json()
    mask = np.full((1, 128, 128), 255, dtype=np.uint8)
    deployment.storage.put_bytes(deployment.output_bucket, tiles_key(JOB, "g", (5,)), pack_masks(mask))
    done: list[int] = []
    collector = deployment.collector(tmp_path, tracker, done)

    collector.handle_results([done_report, failed_report] if order == "done then failed"
                             else [failed_report, done_report])

    assert tracker.completed == {"g/0005"} and tracker.dead == {} and tracker.finished
    assert done == [1] and tracker.duplicates == 0
    assert np.array_equal(read_image(DatasetLayout(tmp_path / "ds").tile_mask("g", 5)), mask[0])


class _Gone:
    """A launcher whose workers have all left (idle exit), as after a big job's last tile."""

    def start(self, count: int, environment: dict[str, str]) -> None:
        pass

    def alive(self) -> int:
        return 0

    def stop(self) -> None:
        pass


def test_reports_waiting_when_the_workers_have_left_are_still_collected(moto_server, tmp_path, monkeypatch):
    """Workers exit once the tile queue is empty; a slower orchestrator must still collect what they reported."""
    import am.job
    from am.backends import Backend
    from am.messages import TileResult

    monkeypatch.setattr(am.job, "HEALTH_CHECK_EVERY_S", 0.0)
    deployment = Deployment(moto_server, suffix="left")
    tiles = range(25)
    masks = pack_masks(np.zeros((5, 128, 128), np.uint8))
    bundles = [tuple(tiles[i:i + 5]) for i in range(0, 25, 5)]
    deployment.storage.put_many(deployment.output_bucket, [(tiles_key(JOB, "g", b), masks) for b in bundles])
    deployment.results.send_many([TileResult(job=JOB, group="g", tiles=b, status="done", attempt=1,
                                             worker="w").to_json() for b in bundles])
    tracker = JobTracker([tile_name("g", n) for n in tiles], max_attempts=3)
    backend = Backend("local", deployment.clients, _Gone(), deployment.queue.url, deployment.dlq.url,
                      deployment.input_bucket, deployment.output_bucket, "tiny")

    am.job._wait_for_tiles(backend, deployment.collector(tmp_path, tracker, []), results=deployment.results,
                           dead_letters=deployment.dlq, deadline=float("inf"))

    assert tracker.finished and len(tracker.completed) == 25
