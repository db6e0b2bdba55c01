"""S3 throttling and lost connections cost a tile no receive, and one stop costs a message at most one.

Faults are injected at botocore's before-send hook of a real S3 client on moto, so the worker sees
them exactly as it would see S3's; the client's own retries are off, so the counts are exact.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import SSLError

from am.transport.queue import Received
from am.transport.storage import Storage
from am.worker import outage
from am.worker.worker import HELD_WAIT_S
from tests.waiting import wait_until

from .conftest import FAST_RETRY, Env, FakePredictor, expected_mask, run_in_thread
from .s3_faults import S3Faults, s3_without_botocore_retries, slow_down


def _fault(kind: str) -> Callable[[Any], AWSResponse]:
    """SlowDown for "throttle"; a TLS error of the network for "ssl"."""
    def ssl_error(request: Any) -> AWSResponse:
        raise SSLError(endpoint_url=request.url, error="[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] bad record mac")

    return ssl_error if kind == "ssl" else slow_down


@pytest.fixture(autouse=True)
def _short_outage_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outage, "OUTAGE_PAUSE_S", 0.01)


@pytest.mark.parametrize(("operation", "fault"), [("GetObject", "throttle"), ("PutObject", "ssl")])
def test_an_outage_longer_than_the_retry_policy_costs_the_tile_no_receive(env: Env, operation: str,
                                                                          fault: str) -> None:
    # FAST_RETRY gives up after 3 attempts: 7 faults in a row outlast it twice over, as minutes of
    # SlowDown outlast the default policy. The message stays held and the tile is done at its first receive.
    env.put_tiles([0, 1])
    client = s3_without_botocore_retries()
    faults = S3Faults(client, operation, count=7, answer=_fault(fault))
    worker = env.worker(FakePredictor(), storage=Storage(client, threads=4, retry=FAST_RETRY), batch_size=2)
    assert worker.run() == 0
    assert faults.injected == 7
    results = env.collect_results()
    assert sorted((r.tiles[0], r.status, r.attempt) for r in results) == [(0, "done", 1), (1, "done", 1)]
    assert worker.stats.failed == 0
    assert env.dlq.depth() == {"visible": 0, "in_flight": 0}
    assert env.queue.depth() == {"visible": 0, "in_flight": 0}
    for n in (0, 1):
        assert (env.mask(n) == expected_mask(n)).all()


def test_an_outage_beyond_the_workers_patience_stops_it_with_every_message_given_back(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.put_tiles(range(3))
    client = s3_without_botocore_retries()
    faults = S3Faults(client, "GetObject", count=None, answer=slow_down)
    worker = env.worker(FakePredictor(), storage=Storage(client, threads=4, retry=FAST_RETRY), batch_size=4,
                        outage_s=0.5, idle_exit_s=30)
    with caplog.at_level(logging.ERROR, logger="am.worker.worker"):
        assert worker.run() == 1
    assert faults.injected > 3  # retried past the policy's own attempts
    assert env.collect_results() == []  # no tile was reported failed
    assert worker.stats.failed == 0
    assert env.dlq.depth() == {"visible": 0, "in_flight": 0}
    assert env.queue.depth() == {"visible": 3, "in_flight": 0}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("still failing after" in m and "giving every held message back and exiting" in m for m in errors), \
        errors
    # Received once each by this worker; the next receive is the second, with one more to go.
    again = env.queue.receive(max_messages=10, wait_s=0)
    assert sorted(m.receive_count for m in again) == [2, 2, 2]


def test_one_stop_costs_a_prefetched_message_one_receive(env: Env) -> None:
    # The stop comes while the receiving thread polls for a third message, the second one prefetched.
    env.put_tiles([0, 1])
    predictor = FakePredictor()
    predictor.release.clear()
    worker = env.worker(predictor, batch_size=1, idle_exit_s=30)
    real_receive = worker._queue.receive
    calls: list[int] = []
    third_poll = threading.Event()

    def receive(**kwargs: Any) -> list[Received]:
        calls.append(kwargs["wait_s"])
        if len(calls) >= 3:
            third_poll.set()
        return real_receive(**kwargs)

    worker._queue.receive = receive  # type: ignore[method-assign]
    thread, out = run_in_thread(worker)
    assert third_poll.wait(30), "the worker never polled for a third message"
    started = time.monotonic()
    worker.stop()
    predictor.release.set()
    thread.join(30)
    assert out == {"code": 0}
    assert time.monotonic() - started < HELD_WAIT_S + 10  # within a local worker's 25 s grace
    assert [(r.tiles[0], r.status) for r in env.collect_results()] == [(0, "done")]  # tile 1 was given back
    again = env.queue.receive(wait_s=0)
    assert [(m.body, m.receive_count) for m in again] == [(env.message(1).to_json(), 2)]


def test_a_stop_during_an_outage_gives_the_messages_back_after_the_grace_and_exits_0(env: Env) -> None:
    env.put_tiles(range(2))
    client = s3_without_botocore_retries()
    faults = S3Faults(client, "GetObject", count=None, answer=slow_down)
    worker = env.worker(FakePredictor(), storage=Storage(client, threads=4, retry=FAST_RETRY), batch_size=2,
                        idle_exit_s=30, stop_grace_s=0.5)
    thread, out = run_in_thread(worker)
    wait_until(lambda: faults.injected > 6, timeout=30, what="two rounds of the retry policy")
    worker.stop()
    thread.join(30)
    assert out == {"code": 0}
    assert env.collect_results() == []
    assert worker.stats.failed == 0
    assert env.dlq.depth() == {"visible": 0, "in_flight": 0}
    assert env.queue.depth() == {"visible": 2, "in_flight": 0}
