"""S3 and SQS errors (fault 6): injected on a fraction of calls they are absorbed by retries with
backoff; when they persist the run ends in a clear error that names the call, not in a hang.

The injection is a botocore ``before-send`` hook on every client the job and its workers build:
the request is answered with HTTP 500, a throttling error or a dropped connection instead of
being sent, exactly as the service or the network would.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError

from am.backends import Backend
from am.dataset import DatasetLayout
from am.endpoint import EmbeddedEndpoint
from am.job import run_job
from am.model_source import resolve_model
from am.prepare import prepare_group
from am.settings import load_settings
from am.stitch import stitch_group
from am.transport.clients import ClientFactory
from am.transport.queue import ensure_tile_queues
from am.transport.storage import Storage

from .harness import PipelineRun, ThreadLauncher, assert_nothing_left, assert_same_as_undisturbed, make_dataset

FAULT_RATE = 0.15
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz-sentinel"


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any):
        yield self._data


class FaultInjector:
    """Answers a seeded fraction of requests with a failure instead of sending them; counts what it did."""

    def __init__(self, rate: float, *, seed: int = 0) -> None:
        self.rate = rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.calls = 0

    def __call__(self, request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        service = event_name.split(".")[1]
        with self._lock:
            self.calls += 1
            if self._random.random() >= self.rate:
                return None
            kind = self._random.choice(("http-500", "throttled", "connection-reset"))
            self.injected[kind] += 1
        if kind == "connection-reset":
            raise ConnectionClosedError(endpoint_url=request.url)
        if service == "s3":
            code, status = ("InternalError", 500) if kind == "http-500" else ("SlowDown", 503)
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Body(body))
        code, status = ("InternalFailure", 500) if kind == "http-500" else ("ThrottlingException", 400)
        body = f'{{"__type": "com.amazonaws.sqs#{code}", "message": "injected"}}'.encode()
        return AWSResponse(request.url, status, {"Content-Type": "application/x-amz-json-1.0"}, _Body(body))


@dataclass(frozen=True)
class FlakyClients(ClientFactory):
    """Clients for the endpoint whose requests go through the injector first."""

    injector: FaultInjector | None = field(default=None, compare=False)

    def _client(self, service: str) -> Any:
        client = super()._client(service)
        if self.injector is not None:
            client.meta.events.register("before-send", self.injector)
        return client


def test_injected_errors_on_a_fraction_of_calls_are_absorbed(moto_server, tmp_path, tiny_model, predictor):
    dataset = make_dataset(tmp_path / "ds", {"g1": (400, 400)})
    settings = load_settings({"model": str(tiny_model), "tile_size": 128, "tile_overlap": 32, "workers": 2,
                              "visibility_timeout_s": 30, "queue_name": "flaky-tiles",
                              "dead_letter_queue_name": "flaky-dlq", "input_bucket": "flaky-in",
                              "output_bucket": "flaky-out",
                              # One tile per message: the most calls, so the most faults to absorb.
                              "tiles_per_message": 1})
    _, model_id = resolve_model(settings, cache_dir=tmp_path / "cache")
    layout = DatasetLayout(dataset)
    prepared = prepare_group(layout, "g1", settings=settings, model_id=model_id)
    clean = ClientFactory(endpoint_url=moto_server)
    storage = Storage(clean.s3())
    for bucket in (settings.input_bucket, settings.output_bucket):
        storage.ensure_bucket(bucket)
    queue_url, dlq_url = ensure_tile_queues(clean.sqs(), name=settings.queue_name,
                                            dead_letter_name=settings.dead_letter_queue_name,
                                            visibility_timeout_s=30, max_receive_count=3)
    injector = FaultInjector(FAULT_RATE)
    flaky = FlakyClients(endpoint_url=moto_server, injector=injector)
    launcher = ThreadLauncher(flaky, predictor, input_bucket=settings.input_bucket,
                              output_bucket=settings.output_bucket, queue_url=queue_url)
    backend = Backend("local", flaky, launcher, queue_url, dlq_url, settings.input_bucket, settings.output_bucket,
                      "tiny")

    report = run_job(backend, [prepared], layout=layout, settings=settings, job_id="20261124-120000-f1a4ee",
                     show_progress=False)

    assert report.completed == prepared.n_tiles == 16 and report.dead == {}
    stitch_group(layout, prepared)
    assert_same_as_undisturbed(dataset, "g1", predictor)
    # The faults were real and of every kind: the retries, not luck, carried the job.
    assert set(injector.injected) == {"http-500", "throttled", "connection-reset"}, injector.injected
    assert sum(injector.injected.values()) >= 10, (injector.injected, injector.calls)
    # The job cleaned up through the same faults.
    assert list(storage.list_keys(settings.input_bucket, "20261124-120000-f1a4ee/")) == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_endpoint_ends_in_a_clear_error_without_leaking_credentials(tmp_path, tiny_model):
    """Persistent failure at the start: the call is named, retries are bounded, no worker starts, no secret shows."""
    dataset = make_dataset(tmp_path / "ds", {"g1": (200, 200)})
    url = f"http://127.0.0.1:{_closed_port()}"
    env = {"AM_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7SENTNEL", "AWS_SECRET_ACCESS_KEY": SECRET}
    started = time.monotonic()
    with PipelineRun(dataset, tiny_model, tmp_path, "--no-register", env=env) as run:
        code = run.wait(timeout=120)
    took = time.monotonic() - started

    assert code == 1, run.stderr[-4000:]
    assert took < 60, f"{took:.1f} s to give up"
    assert re.search(r"ensure bucket am-segm-input failed 6 time\(s\), giving up; last error: "
                     r"EndpointConnectionError: Could not connect to the endpoint URL", run.stderr), run.stderr[-3000:]
    assert "Check the endpoint and network" in run.stderr
    assert "started worker" not in run.stderr
    assert SECRET not in run.stderr + run.stdout and "AKIAIOSFODNN7SENTNEL" not in run.stderr + run.stdout
    assert_nothing_left(run)


@pytest.mark.slow
def test_endpoint_dying_mid_job_ends_in_an_error_naming_the_call_not_the_clean_up(tmp_path, tiny_model):
    """Persistent failure mid-job: the error that ended the job is reported, and clean-up does not hold it up."""
    server = EmbeddedEndpoint()
    url = server.start()
    dataset = make_dataset(tmp_path / "ds", {"g1": (1000, 1000)})
    slow = {"AM_ENDPOINT_URL": url, "AM_BATCH_SIZE": "1", "AM_WORKER_THREADS": "1"}
    try:
        with PipelineRun(dataset, tiny_model, tmp_path, "--no-register", env=slow) as run:
            run.wait_until(lambda: (dataset / "tiles" / "g1" / "mask").is_dir(), timeout=120, what="a first mask")
            server.stop()
            stopped_at = time.monotonic()
            code = run.wait(timeout=180)
            took = time.monotonic() - stopped_at
    finally:
        server.stop()
    assert code == 1, run.stderr[-4000:]
    final = [line for line in run.stderr.splitlines() if " ERROR am.pipeline: " in line]
    assert final, run.stderr[-4000:]
    assert "failed 6 time(s), giving up" in final[-1] or "all workers stopped" in final[-1], final[-1]
    # The job's own calls may be what failed (deleting reports it handled is one of them); the
    # clean-up's steps (results queue, S3 prefixes) must never be what the user reads.
    assert not re.search(r"delete (the results queue|s3://)|while ending job", final[-1]), \
        f"a clean-up error replaced the cause: {final[-1]}"
    assert took < 90, f"{took:.1f} s from the endpoint's death to the error"
    assert_nothing_left(run)
