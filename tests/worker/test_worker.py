"""The Worker in-process against moto, with a fake predictor behind the real interface."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest

from am.errors import CheckpointError, TransportError
from am.messages import tiles_key
from am.transport.queue import MAX_WAIT_S, Queue, delete_queue
from am.transport.storage import Storage
from am.worker import worker as worker_module
from am.worker.worker import Worker
from tests.waiting import wait_until

from .conftest import FAST_RETRY, JOB, Env, FakePredictor, expected_mask, run_in_thread


def test_batch_is_processed_reported_and_deleted(env: Env) -> None:
    env.put_tiles(range(6))
    predictor = FakePredictor()
    worker = env.worker(predictor, batch_size=4)
    assert worker.run() == 0
    for n in range(6):
        assert np.array_equal(env.mask(n), expected_mask(n))
    results = env.collect_results()
    assert sorted(r.tiles[0] for r in results) == list(range(6))
    assert {(r.status, r.attempt, r.worker, r.error) for r in results} == {("done", 1, "test-worker", "")}
    assert all(r.compute_s >= 0 for r in results)
    assert max(predictor.batches) <= 4 and sum(predictor.batches) == 6
    assert env.queue.depth() == {"visible": 0, "in_flight": 0}
    assert (worker.stats.done, worker.stats.failed, worker.stats.rejected) == (6, 0, 0)


def test_same_tile_gives_the_same_mask_bytes(env: Env) -> None:
    env.put_tiles([3])
    assert env.worker(FakePredictor()).run() == 0
    first = env.mask_object(3)
    env.queue.send_many([env.message(3).to_json()])
    assert env.worker(FakePredictor()).run() == 0
    assert env.mask_object(3) == first


def test_batches_larger_than_one_receive_are_filled(env: Env) -> None:
    env.put_tiles(range(30))
    predictor = FakePredictor()
    assert env.worker(predictor, batch_size=16).run() == 0
    assert sum(predictor.batches) == 30
    assert max(predictor.batches) > 10 and max(predictor.batches) <= 16
    assert len(env.collect_results()) == 30


def _in_first_batch(env: Env, tiles: int, **overrides: Any) -> tuple[FakePredictor, Worker, threading.Thread,
                                                                   dict[str, int]]:
    """``tiles`` tiles queued and a worker running on a thread, returned once its model call has begun
    and is held there (``predictor.release`` lets it go)."""
    env.put_tiles(range(tiles))
    predictor = FakePredictor()
    predictor.release.clear()
    worker = env.worker(predictor, **overrides)
    thread, out = run_in_thread(worker)
    assert predictor.started.wait(10)
    return predictor, worker, thread, out


def test_heartbeat_keeps_slow_batch_and_prefetched_ones_hidden(env: Env) -> None:
    # A 4 s timeout is beaten every 1.3 s: a beat may come 2.6 s late on a loaded machine before a message
    # shows (at 2 s, 1 s late was enough).
    predictor, _worker, thread, out = _in_first_batch(env, 4, visibility_timeout_s=4, batch_size=2)
    time.sleep(4.5)  # past the 4 s visibility timeout: only the heartbeat keeps the messages hidden
    assert env.queue.receive(wait_s=0) == []  # neither the batch computing nor the one prefetched
    predictor.release.set()
    thread.join(20)
    assert out == {"code": 0}
    assert [r.status for r in env.collect_results()] == ["done"] * 4
    time.sleep(4.2)  # past the visibility timeout: deleted, not merely hidden
    assert env.queue.receive(wait_s=0) == []
    assert env.queue.depth() == {"visible": 0, "in_flight": 0}


def test_poison_tile_fails_three_times_and_is_dead_lettered_before_its_last_report(env: Env) -> None:
    """The third failure ends the job's wait for the tile, so its message must be in the dead-letter
    queue by then: SQS moves a message left hidden only at a later receive, after the job has ended
    and deleted its dead letters."""
    env.put_tiles(range(4), corrupt={2})
    worker = env.worker(FakePredictor(), idle_exit_s=1.5)
    sent_to_dlq_before_report: list[bool] = []
    report = worker._report

    def report_after_checking(tiles):
        if any(not t.ok and t.received.receive_count == 3 for t in tiles):
            depth = env.dlq.depth()
            sent_to_dlq_before_report.append(depth["visible"] + depth["in_flight"] == 1)
        return report(tiles)

    worker._report = report_after_checking
    assert worker.run() == 0
    results = env.collect_results()
    failed = sorted((r.attempt, r.tiles[0]) for r in results if r.status == "failed")
    assert failed == [(1, 2), (2, 2), (3, 2)]
    assert all("not a readable tile array" in r.error for r in results if r.status == "failed")
    assert sorted(r.tiles[0] for r in results if r.status == "done") == [0, 1, 3]
    assert sent_to_dlq_before_report == [True]
    dead = env.dlq.receive(wait_s=0)
    assert [json.loads(d.body)["tiles"] for d in dead] == [[2]]
    assert env.queue.depth() == {"visible": 0, "in_flight": 0}
    assert (worker.stats.done, worker.stats.failed) == (3, 3)


def test_a_worker_that_cannot_reach_the_dead_letter_queue_leaves_the_move_to_sqs(env: Env, monkeypatch) -> None:
    env.put_tiles([2], corrupt={2})
    worker = env.worker(FakePredictor(), idle_exit_s=1.5)
    send = Queue.send_many

    def dead_letter_queue_unreachable(self, bodies):
        if self.url == env.dlq.url:
            raise TransportError("access denied")
        return send(self, bodies)

    monkeypatch.setattr(Queue, "send_many", dead_letter_queue_unreachable)
    assert worker.run() == 0
    monkeypatch.undo()
    # SQS moved it at the fourth receive, as before.
    assert [json.loads(d.body)["tiles"] for d in env.dlq.receive(wait_s=0)] == [[2]]


def test_the_queue_reports_its_redrive_policy(env: Env) -> None:
    assert env.queue.redrive() == (3, env.dlq.url)
    env.sqs.set_queue_attributes(QueueUrl=env.queue.url, Attributes={"RedrivePolicy": ""})
    assert env.queue.redrive() == (0, None)


class RecordingStorage(Storage):
    def __init__(self, inner: Storage) -> None:
        super().__init__(inner._s3, threads=2, retry=FAST_RETRY)
        self.read: list[str] = []
        self.written: list[str] = []

    def get_bytes(self, bucket: str, key: str) -> bytes:
        self.read.append(key)
        return super().get_bytes(bucket, key)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self.written.append(key)
        super().put_bytes(bucket, key, data)


def test_messages_leaving_the_job_prefix_are_rejected_and_dead_lettered(env: Env) -> None:
    env.put_tiles([1])
    env.storage.put_bytes("in-bucket", "other-job/g/0001.png", b"secret")
    good = json.loads(env.message(1).to_json())
    bad_bodies = [
        json.dumps({**good, "input": "other-job/g/0001.png"}),
        json.dumps({**good, "output": f"{JOB}/../other-job/g/0001.png"}),
        "not json at all",
    ]
    env.queue.send_many(bad_bodies)
    storage = RecordingStorage(env.storage)
    worker = env.worker(FakePredictor(), storage=storage, idle_exit_s=1.5)
    assert worker.run() == 0
    assert storage.read == [tiles_key(JOB, "g", (1,))]
    assert storage.written == [tiles_key(JOB, "g", (1,))]
    assert [r.tiles[0] for r in env.collect_results()] == [1]
    dead = sorted(d.body for d in env.dlq.receive(max_messages=10, wait_s=0))
    assert dead == sorted(bad_bodies)
    assert worker.stats.rejected == 3 * 3  # three receives each before the DLQ takes them


def test_idle_exit(env: Env) -> None:
    start = time.monotonic()
    assert env.worker(FakePredictor(), idle_exit_s=1.0).run() == 0
    assert time.monotonic() - start < 5


def test_stop_mid_batch_finishes_the_batch(env: Env) -> None:
    predictor, worker, thread, out = _in_first_batch(env, 8, batch_size=4, idle_exit_s=30)
    worker.stop()
    worker.stop()  # idempotent
    time.sleep(0.3)
    assert thread.is_alive()  # still finishing the batch in hand
    predictor.release.set()
    thread.join(10)
    assert out == {"code": 0}
    assert len(env.collect_results()) == 4 == worker.stats.done
    assert env.queue.depth() == {"visible": 4, "in_flight": 0}


def test_stop_while_idle_returns_at_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # Idle for an hour before it would leave by itself, and each long poll lasts MAX_WAIT_S (20 s):
    # a worker that ends within the join below was ended by the stop, in its poll.
    worker = env.worker(FakePredictor(), idle_exit_s=3600)
    polling = threading.Event()
    receive_batch = worker._receive_batch

    def noted(*args: Any, **kwargs: Any) -> Any:
        polling.set()
        return receive_batch(*args, **kwargs)

    monkeypatch.setattr(worker, "_receive_batch", noted)
    thread, out = run_in_thread(worker)
    assert polling.wait(60), "the worker never polled the queue"
    worker.stop()
    thread.join(timeout=MAX_WAIT_S / 2)
    assert not thread.is_alive(), "the stop waited for the long poll (or the idle exit)"
    assert out == {"code": 0}


def test_stop_seen_first_by_the_model_thread_while_idle_returns_at_once(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # The model thread looks at the stop flag before its first take: a stop right after the start ends it
    # before the supervisor, between two looks, has seen the stop. Nothing is held all the same, so the
    # supervisor must not wait for the long poll under way either.
    monkeypatch.setattr(worker_module, "_SUPERVISE_INTERVAL_S", MAX_WAIT_S)  # it looks once, then sleeps
    worker = env.worker(FakePredictor(), idle_exit_s=3600)
    polling = threading.Event()
    receive_batch, compute = worker._receive_batch, worker._compute

    def noted(*args: Any, **kwargs: Any) -> Any:
        polling.set()
        return receive_batch(*args, **kwargs)

    def stopped_first(*args: Any) -> None:
        assert polling.wait(60), "the worker never polled the queue"
        time.sleep(0.5)  # the supervisor has looked, and sleeps
        worker.stop()
        compute(*args)

    monkeypatch.setattr(worker, "_receive_batch", noted)
    monkeypatch.setattr(worker, "_compute", stopped_first)
    thread, out = run_in_thread(worker)
    thread.join(timeout=MAX_WAIT_S / 2)
    assert not thread.is_alive(), "the stop waited for the long poll (or the idle exit)"
    assert out == {"code": 0}


def test_abort_releases_held_messages_at_once(env: Env) -> None:
    predictor, worker, thread, out = _in_first_batch(env, 3, idle_exit_s=30)
    worker.stop()
    worker.abort()
    thread.join(5)
    assert out == {"code": 1}
    assert env.queue.depth() == {"visible": 3, "in_flight": 0}
    predictor.release.set()


def test_stop_grace_releases_a_batch_that_cannot_finish(env: Env) -> None:
    predictor, worker, thread, out = _in_first_batch(env, 2, idle_exit_s=30, stop_grace_s=0.5)
    worker.stop()
    thread.join(5)
    assert out == {"code": 0}
    assert env.queue.depth() == {"visible": 2, "in_flight": 0}
    predictor.release.set()


def test_a_model_call_that_never_returns_gives_every_held_message_back_and_exits_1(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    # A hung GPU or driver: the heartbeat would keep the batch, and those prefetched, hidden for hours.
    predictor, _worker, thread, out = _in_first_batch(env, 12, idle_exit_s=30, max_batch_s=1.0)
    thread.join(15)
    assert out == {"code": 1}
    assert env.queue.depth() == {"visible": 12, "in_flight": 0}
    assert "a model call has not returned after 1 s (a hung GPU or driver?)" in caplog.text
    predictor.release.set()


def test_inference_error_fails_every_tile_of_the_batch(env: Env) -> None:
    env.put_tiles(range(3))
    worker = env.worker(FakePredictor(fail=RuntimeError("CUDA out of memory")), idle_exit_s=1.0)
    assert worker.run() == 0
    results = env.collect_results()
    assert len(results) == 9 and {r.status for r in results} == {"failed"}
    assert all("RuntimeError: CUDA out of memory" in r.error for r in results)
    assert len(env.dlq.receive(max_messages=10, wait_s=0)) == 3
    assert env.queue.depth() == {"visible": 0, "in_flight": 0}


@pytest.mark.parametrize("where", ["inference", "load"])
@pytest.mark.parametrize("failure", [
    "torch", RuntimeError("CUDA error: an illegal memory access was encountered")])
def test_a_lost_gpu_context_gives_every_held_message_back_and_exits_1(
        env: Env, caplog: pytest.LogCaptureFixture, where: str, failure: Exception | str) -> None:
    # After an illegal memory access every later call fails too: charged to the tiles, the whole queue
    # would drain into the dead-letter queue batch by batch. The messages go back, no tile failed, instead.
    import torch

    if failure == "torch":
        failure = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    env.put_tiles(range(3))
    if where == "inference":
        models: Any = FakePredictor(fail=failure)
    else:
        def models(uri: str) -> Any:
            raise failure
    worker = env.worker(models, idle_exit_s=1.0)
    assert worker.run() == 1
    assert env.queue.depth() == {"visible": 3, "in_flight": 0}
    assert env.dlq.depth()["visible"] == 0
    assert env.collect_results() == []
    assert "the GPU failed and cannot be used again by this process" in caplog.text
    assert "illegal memory access" in caplog.text


@pytest.mark.parametrize(("failure", "said"), [
    (CheckpointError("checkpoint /nowhere/other.pt does not exist"), "does not exist"),
    # torch's device and memory failures at load are failures of these tiles, with their reason, not a crash.
    (RuntimeError("CUDA out of memory"), "model /nowhere/other.pt: RuntimeError: CUDA out of memory"),
])
def test_model_that_cannot_load_fails_its_tiles(env: Env, failure: Exception, said: str) -> None:
    env.put_tiles([0])
    env.queue.send_many([env.message(0, model="/nowhere/other.pt").to_json()])

    def models(uri: str) -> Any:
        if uri == "/nowhere/other.pt":
            raise failure
        return FakePredictor()

    worker = env.worker(models, batch_size=2, idle_exit_s=1.0)
    assert worker.run() == 0
    results = env.collect_results()
    assert {r.status for r in results if r.attempt == 1} == {"done", "failed"}
    assert any(said in r.error for r in results)


def test_tiles_of_a_finished_job_are_dropped(env: Env) -> None:
    env.put_tiles(range(2))
    delete_queue(env.sqs, env.results.url)
    worker = env.worker(FakePredictor())
    assert worker.run() == 0
    assert env.queue.depth() == {"visible": 0, "in_flight": 0}
    assert env.dlq.depth()["visible"] == 0


def test_unreported_tiles_are_not_deleted(env: Env) -> None:
    env.put_tiles([0])

    class Down:
        def send_many(self, bodies: list[str]) -> None:
            raise TransportError("send batch failed 6 time(s)")

    worker = env.worker(FakePredictor(), results=lambda url: Down(), idle_exit_s=1.0)
    assert worker.run() == 0
    assert worker.stats.done == 0
    assert len(env.dlq.receive(wait_s=0)) == 1


def test_bad_arguments_are_refused(env: Env) -> None:
    from am.errors import WorkerError

    with pytest.raises(WorkerError, match="batch size"):
        env.worker(FakePredictor(), batch_size=0)
    with pytest.raises(WorkerError, match="idle exit"):
        env.worker(FakePredictor(), idle_exit_s=0)
    with pytest.raises(WorkerError, match="longest batch"):
        env.worker(FakePredictor(), max_batch_s=float("inf"))


def test_stop_before_run_returns_without_receiving(env: Env) -> None:
    env.put_tiles(range(2))
    worker = env.worker(FakePredictor(), idle_exit_s=30)
    worker.stop()
    assert worker.run() == 0
    assert env.queue.depth() == {"visible": 2, "in_flight": 0}


def test_stop_gives_prefetched_batches_back_at_once(env: Env) -> None:
    predictor, worker, thread, out = _in_first_batch(env, 6, batch_size=2, idle_exit_s=30)
    wait_until(lambda: env.queue.depth()["visible"] == 0, timeout=30,
               what="two batches prefetched behind the first")
    worker.stop()
    # Before the batch in hand finishes, the prefetched ones are visible for other workers.
    wait_until(lambda: env.queue.depth() == {"visible": 4, "in_flight": 2}, timeout=30,
               what="the prefetched batches given back")
    predictor.release.set()
    thread.join(10)
    assert out == {"code": 0}
    assert predictor.batches == [2]
    assert sorted(r.tiles[0] for r in env.collect_results()) == [0, 1]
    assert env.queue.depth() == {"visible": 4, "in_flight": 0}


class BrokenStorage(Storage):
    """Raises a non-am-segm error (a bug, not a per-tile failure) on reads or writes."""

    def __init__(self, inner: Storage, *, broken: str) -> None:
        super().__init__(inner._s3, threads=2, retry=FAST_RETRY)
        self.broken = broken

    def get_bytes(self, bucket: str, key: str) -> bytes:
        if self.broken == "download":
            raise KeyError("boom in download")
        return super().get_bytes(bucket, key)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        if self.broken == "upload":
            raise KeyError("boom in upload")
        super().put_bytes(bucket, key, data)


@pytest.mark.parametrize("broken", ["download", "upload"])
def test_unexpected_error_in_a_stage_stops_the_worker_and_releases_everything(env: Env, broken: str) -> None:
    env.put_tiles(range(6))
    worker = env.worker(FakePredictor(), storage=BrokenStorage(env.storage, broken=broken), batch_size=2,
                        idle_exit_s=30)
    start = time.monotonic()
    assert worker.run() == 1
    assert time.monotonic() - start < 10
    assert env.collect_results() == []  # nothing reported, nothing deleted
    assert env.queue.depth() == {"visible": 6, "in_flight": 0}


def test_unexpected_error_in_the_model_stage_stops_the_worker(env: Env) -> None:
    env.put_tiles(range(2))

    def models(uri: str) -> Any:
        raise TypeError("not an AmError: a bug")

    assert env.worker(models, idle_exit_s=30).run() == 1
    assert env.queue.depth() == {"visible": 2, "in_flight": 0}


def test_messages_given_back_on_a_stop_are_not_taken_back_by_the_workers_own_long_poll(env: Env) -> None:
    """The model fails while the receiving thread is in a long poll for the next batch: the messages
    given back reach that poll at once. The worker must return them before it exits, or they stay
    hidden from every other worker for a visibility timeout."""
    env.put_tiles(range(2))

    def models(uri: str) -> Any:
        time.sleep(0.5)  # by now the next receive is polling the empty queue
        raise TypeError("not an AmError: a bug")

    def receiving() -> int:
        return sum(t.name == "am-receive" and t.is_alive() for t in threading.enumerate())

    before = receiving()
    started = time.monotonic()
    assert env.worker(models, batch_size=2, idle_exit_s=30).run() == 1
    took = time.monotonic() - started
    # Its receiving thread has ended: no poll of this worker holds the messages it gave back.
    assert receiving() <= before
    assert env.queue.depth() == {"visible": 2, "in_flight": 0}
    assert took < 5, f"the worker took {took:.1f} s to exit"


def test_receive_error_stops_the_worker(env: Env) -> None:
    env.put_tiles(range(2))
    worker = env.worker(FakePredictor(), idle_exit_s=30)
    delete_queue(env.sqs, env.queue.url)
    assert worker.run() == 1


def test_stage_times_are_recorded_per_tile(env: Env) -> None:
    env.put_tiles(range(4))
    worker = env.worker(FakePredictor(), batch_size=2)
    assert worker.run() == 0
    per_tile = worker.stats.clock.per_tile(tiles=worker.stats.done)
    assert worker.stats.done == 4
    for stage in ("receive", "download", "decode", "compute", "encode", "upload", "report", "delete"):
        assert per_tile[stage] > 0, stage


def test_messages_of_several_tiles_share_forward_passes_and_come_back_as_one_object(env: Env) -> None:
    env.put_tiles(range(10), per_message=4)  # messages of 4, 4 and 2 tiles
    predictor = FakePredictor()
    worker = env.worker(predictor, batch_size=6)
    assert worker.run() == 0
    for first, count in ((0, 4), (4, 4), (8, 2)):
        for n in range(first, first + count):
            assert np.array_equal(env.mask(n, first=first, count=count), expected_mask(n))
    results = sorted(env.collect_results(), key=lambda r: r.tiles)
    assert [r.tiles for r in results] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert {r.status for r in results} == {"done"}
    # Two messages make the first batch of 6 or more tiles, computed in model calls of the batch size (6):
    # the first spans both messages.
    assert predictor.batches == [6, 2, 2]
    assert (worker.stats.done, worker.stats.failed) == (10, 0)
    assert env.queue.depth() == {"visible": 0, "in_flight": 0}


def test_a_worker_takes_about_one_batch_of_tiles_per_receive_not_batch_size_messages(env: Env) -> None:
    env.put_tiles(range(32), per_message=8)
    received: list[int] = []
    worker = env.worker(FakePredictor(), batch_size=8)
    original = worker._queue.receive

    def counting_receive(**kwargs: Any) -> list:
        got = original(**kwargs)
        if got:
            received.append(len(got))
        return got

    worker._queue.receive = counting_receive  # type: ignore[method-assign]
    assert worker.run() == 0
    assert received and max(received) == 1  # a message of 8 tiles fills a batch of 8
    assert worker.stats.done == 32


def test_a_damaged_object_fails_every_tile_of_its_message_and_no_other(env: Env) -> None:
    env.put_tiles(range(6), per_message=3, corrupt={4})
    worker = env.worker(FakePredictor(), idle_exit_s=1.5)
    assert worker.run() == 0
    results = env.collect_results()
    assert {r.tiles for r in results if r.status == "done"} == {(0, 1, 2)}
    assert sorted(r.attempt for r in results if r.status == "failed") == [1, 2, 3]
    assert {r.tiles for r in results if r.status == "failed"} == {(3, 4, 5)}
    assert [json.loads(d.body)["tiles"] for d in env.dlq.receive(wait_s=0)] == [[3, 4, 5]]
    assert (worker.stats.done, worker.stats.failed) == (3, 9)


def test_each_message_is_segmented_with_its_own_tta_and_modes_never_share_a_forward_pass(env: Env) -> None:
    env.put_tiles(range(0, 4), per_message=2, tta="d4")
    env.put_tiles(range(4, 8), per_message=2)
    predictor = FakePredictor()
    worker = env.worker(predictor, batch_size=8)
    assert worker.run() == 0
    assert worker.stats.done == 8
    # One batch of 8 tiles holds both kinds: one call per mode, each with that mode's tiles.
    assert sorted(zip(predictor.ttas, predictor.batches, strict=True)) == [("d4", 4), ("off", 4)]
