"""A message the worker rejects is hidden for a backoff, not handed straight back to the next receive."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from am.transport.queue import Queue, Received
from am.worker.worker import Worker

from .conftest import FAST_RETRY, Env, FakePredictor, run_in_thread


class CountingQueue(Queue):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receives = 0

    def receive(self, *args: Any, **kwargs: Any) -> list[Received]:
        self.receives += 1
        return super().receive(*args, **kwargs)


def _worker(env: Env, queue: Queue, **overrides: Any) -> Worker:
    kwargs: dict[str, Any] = {
        "input_bucket": "in-bucket", "output_bucket": "out-bucket",
        "results": partial(Queue, env.sqs, retry=FAST_RETRY), "batch_size": 4, "idle_exit_s": 1.0,
        "visibility_timeout_s": 2, "worker_id": "test-worker", "max_backoff_s": 30,
    }
    kwargs.update(overrides)
    worker = Worker(queue, env.storage, lambda uri: FakePredictor(), **kwargs)
    env.made.append(worker)
    return worker


def test_a_rejected_message_on_a_queue_without_dead_letter_queue_neither_spins_nor_keeps_the_worker(env: Env) -> None:
    url = env.sqs.create_queue(QueueName="tiles-without-dlq")["QueueUrl"]
    queue = CountingQueue(env.sqs, url, retry=FAST_RETRY)
    queue.send_many(["not json at all"])
    worker = _worker(env, queue)

    started = time.monotonic()
    thread, out = run_in_thread(worker)
    thread.join(20)

    assert not thread.is_alive(), f"worker still running after 20 s: {queue.receives} receives"
    assert out == {"code": 0}
    # Idle for 1 s, then it waits one visibility timeout (2 s) for messages held elsewhere: the
    # rejected one reappears once in that time (hidden 2 s after receive 1, 4 s after receive 2).
    assert time.monotonic() - started < 10
    assert 1 <= worker.stats.rejected <= 3
    assert queue.receives <= 15
    assert queue.depth()["visible"] + queue.depth()["in_flight"] == 1  # untouched, still there


def test_a_rejected_message_comes_back_only_after_its_backoff(env: Env) -> None:
    """With a dead-letter queue too: hidden 2**receive s, it reaches the DLQ after the same receives, not at once."""
    env.queue.send_many(["not json at all"])
    worker = _worker(env, env.queue, idle_exit_s=30, visibility_timeout_s=30)
    thread, out = run_in_thread(worker)
    seen: list[float] = []
    deadline = time.monotonic() + 20
    while len(seen) < 2 and time.monotonic() < deadline:
        if worker.stats.rejected > len(seen):
            seen.append(time.monotonic())
        time.sleep(0.02)
    worker.stop()
    thread.join(10)

    assert out == {"code": 0}
    assert len(seen) == 2, "the rejected message did not come back"
    assert seen[1] - seen[0] >= 1.5  # hidden for 2 s after its first receive
