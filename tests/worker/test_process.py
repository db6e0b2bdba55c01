"""``python -m am.worker`` as a real process against moto's server on 127.0.0.1, with the tiny test model."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from am.endpoint import EmbeddedEndpoint
from am.messages import TileMessage, TileResult, tiles_key
from am.model.build import write_test_checkpoint
from am.tilepack import pack_tiles, unpack_masks
from am.transport.clients import ClientFactory
from am.transport.queue import MAX_WAIT_S, Queue, create_results_queue, ensure_tile_queues
from am.transport.storage import Storage
from tests.environment import clean_env
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with EmbeddedEndpoint() as embedded:
        yield embedded.url


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@dataclass
class Stack:
    endpoint: str
    job: str
    storage: Storage
    queue: Queue
    dlq: Queue
    results: Queue
    model: Path
    logs: Path

    def put_tiles(self, n: int, *, size: int, per_message: int = 2, model: str = "") -> list[tuple[int, ...]]:
        """``n`` random tiles, ``per_message`` to a message and an object, for ``model`` (default the tiny
        checkpoint); returns each message's tiles."""
        rng = np.random.default_rng(0)
        bundles = [tuple(range(i, min(n, i + per_message))) for i in range(0, n, per_message)]
        items = [(tiles_key(self.job, "g", tiles),
                  pack_tiles(rng.integers(0, 256, (len(tiles), size, size), dtype=np.uint8))) for tiles in bundles]
        self.storage.put_many("proc-in", items)
        self.queue.send_many([
            TileMessage(job=self.job, group="g", tiles=tiles, input=key, output=key, model=model or str(self.model),
                        reply=self.results.url).to_json()
            for tiles, (key, _) in zip(bundles, items, strict=True)
        ])
        return bundles

    def environment(self, **overrides: str) -> dict[str, str]:
        env = clean_env()
        env.update({
            "AM_QUEUE_URL": self.queue.url, "AM_INPUT_BUCKET": "proc-in", "AM_OUTPUT_BUCKET": "proc-out",
            "AM_MODEL": str(self.model), "AM_ENDPOINT_URL": self.endpoint, "AM_IDLE_EXIT_S": "2",
            "AM_VISIBILITY_TIMEOUT_S": "30", "AM_THREADS": "1", "AM_BATCH_SIZE": "4", "AM_LOG_LEVEL": "INFO",
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        env.update(overrides)
        return env

    def start(self, name: str, **overrides: str) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as log:
            return subprocess.Popen([sys.executable, "-m", "am.worker"], cwd=REPO, env=self.environment(
                AM_WORKER_ID=name, **overrides), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def results_so_far(self) -> list[TileResult]:
        out = []
        while batch := self.results.receive(wait_s=0):
            out.extend(TileResult.from_json(r.body) for r in batch)
            self.results.delete_many([r.receipt_handle for r in batch])
        return out


@pytest.fixture
def stack(endpoint: str, checkpoint: Path, tmp_path: Path) -> Stack:
    clients = ClientFactory(endpoint_url=endpoint)
    sqs = clients.sqs()
    storage = Storage(clients.s3())
    storage.ensure_bucket("proc-in")
    storage.ensure_bucket("proc-out")
    suffix = uuid.uuid4().hex[:8]
    url, dlq_url = ensure_tile_queues(sqs, name=f"tiles-{suffix}", dead_letter_name=f"tiles-{suffix}-dlq",
                                      visibility_timeout_s=30, max_receive_count=3)
    job = f"job-{suffix}"
    results = Queue(sqs, create_results_queue(sqs, prefix="results", job=job))
    return Stack(endpoint, job, storage, Queue(sqs, url), Queue(sqs, dlq_url), results, checkpoint, tmp_path)


def test_worker_processes_segment_tiles_and_stop_cleanly_on_sigterm(stack: Stack) -> None:
    """Stopped mid-job, a worker exits 0 and loses nothing; a second one finishes, then stops at once when idle."""
    # Enough tiles that the first worker cannot finish them all between its first result and the signal,
    # however slowly this machine hands the result over (it usually has 8-12 done by then).
    n, size = 120, 192
    bundles = stack.put_tiles(n, size=size)
    first = stack.start("w-first", AM_IDLE_EXIT_S="30")
    seen: list[TileResult] = []
    wait_until(lambda: bool(seen.extend(stack.results_so_far()) or seen), timeout=60, what="a first result")
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0, stack.log("w-first")
    assert "stopping: " in stack.log("w-first")
    seen.extend(stack.results_so_far())
    first_done = {t for r in seen if r.status == "done" for t in r.tiles}
    assert 0 < len(first_done) < n, "the first worker should have been stopped part way"
    assert stack.queue.depth()["in_flight"] == 0  # nothing left hidden: unfinished tiles are visible again

    second = stack.start("w-second", AM_IDLE_EXIT_S="60")
    wait_until(lambda: bool(seen.extend(stack.results_so_far())) or {t for r in seen for t in r.tiles} == set(range(n)),
               timeout=60, what="every tile to be reported")
    time.sleep(0.3)
    second.send_signal(signal.SIGTERM)  # idle now, inside a long poll
    # A long poll lasts MAX_WAIT_S (20 s) and the idle exit is 60 s away: ending within 10 s, it was the stop.
    try:
        assert second.wait(MAX_WAIT_S / 2) == 0, stack.log("w-second")
    except subprocess.TimeoutExpired:
        pytest.fail(f"the stop waited for the long poll:\n{stack.log('w-second')[-3000:]}")

    # Tiles the first worker had prefetched were given back when it stopped: their second receive is attempt 2.
    assert {r.status for r in seen} == {"done"} and {r.attempt for r in seen} <= {1, 2}
    assert {r.attempt for r in seen if r.worker == "w-first"} == {1}
    assert {r.worker for r in seen} == {"w-first", "w-second"}
    for tiles in bundles:
        key = tiles_key(stack.job, "g", tiles)
        masks = unpack_masks(stack.storage.get_bytes("proc-out", key), count=len(tiles), size=size, name=key)
        assert masks.shape == (len(tiles), size, size) and set(np.unique(masks)) <= {0, 255}
    assert stack.queue.depth() == {"visible": 0, "in_flight": 0}
    assert stack.dlq.depth()["visible"] == 0
    assert f"{n - len(first_done)} tile(s) done, 0 failed, 0 rejected" in stack.log("w-second")


def test_missing_environment_exits_2_naming_the_variables(stack: Stack) -> None:
    env = stack.environment()
    del env["AM_QUEUE_URL"], env["AM_OUTPUT_BUCKET"]
    proc = subprocess.run([sys.executable, "-m", "am.worker"], cwd=REPO, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert b"AM_QUEUE_URL, AM_OUTPUT_BUCKET" in proc.stderr


def test_unloadable_model_exits_1_with_the_reason(stack: Stack, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "am.worker"], cwd=REPO, env=stack.environment(AM_MODEL=str(bogus)),
                          capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert b"cannot start" in proc.stderr and str(bogus).encode() in proc.stderr


def test_a_bucket_that_does_not_exist_exits_1_naming_its_setting_before_anything_is_received(stack: Stack) -> None:
    """Going on, the worker would fail every tile and move the whole queue to the dead-letter queue."""
    stack.put_tiles(2, size=64)
    proc = subprocess.run([sys.executable, "-m", "am.worker"], cwd=REPO, timeout=60, capture_output=True,
                          env=stack.environment(AM_INPUT_BUCKET="typo-bucket"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert b"cannot start: bucket typo-bucket (AM_INPUT_BUCKET) does not exist; set AM_INPUT_BUCKET" in proc.stderr
    assert [r.receive_count for r in stack.queue.receive(wait_s=0)] == [1]
    assert stack.dlq.depth()["visible"] == 0


def test_a_model_whose_bucket_does_not_exist_exits_1_naming_am_model_before_anything_is_received(
        stack: Stack) -> None:
    """Going on, the worker would fail every tile and move the whole queue to the dead-letter queue."""
    stack.put_tiles(2, size=64)
    typo = "s3://proc-typo-models/unet/model.pt"
    proc = subprocess.run([sys.executable, "-m", "am.worker"], cwd=REPO, timeout=60, capture_output=True,
                          env=stack.environment(AM_MODEL=typo))
    assert proc.returncode == 1, proc.stderr[-3000:]
    log = proc.stderr.decode(errors="replace")
    # Over HTTP, S3 answers a HeadObject in a missing bucket as for a missing key: a bare 404.
    assert f"cannot start: AM_MODEL = {typo} cannot be loaded: " in log and "does not exist" in log, log
    assert "set AM_MODEL to the s3:// URI of an uploaded checkpoint" in log
    assert [r.receive_count for r in stack.queue.receive(wait_s=0)] == [1]
    assert stack.dlq.depth()["visible"] == 0


def test_tiles_of_a_model_whose_bucket_does_not_exist_stop_the_worker_with_every_message_given_back(
        stack: Stack) -> None:
    """The model the tiles name is not the one the worker started with: found missing only at the first batch."""
    typo = "s3://proc-typo-models/unet/model.pt"
    stack.put_tiles(4, size=64, model=typo)
    proc = subprocess.run([sys.executable, "-m", "am.worker"], cwd=REPO, timeout=120, capture_output=True,
                          env=stack.environment(AM_IDLE_EXIT_S="60"))
    log = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, log[-3000:]
    assert f"model {typo} cannot be loaded: " in log and "does not exist" in log, log
    assert "giving every held message back and exiting" in log
    assert " failed (attempt" not in log and stack.results_so_far() == []
    assert stack.queue.depth() == {"visible": 2, "in_flight": 0}
    assert stack.dlq.depth()["visible"] == 0


def test_the_stop_grace_comes_from_the_stop_timeout_the_worker_is_told(stack: Stack) -> None:
    proc = subprocess.run([sys.executable, "-m", "am.worker"], cwd=REPO, timeout=120, capture_output=True,
                          env=stack.environment(AM_STOP_TIMEOUT_S="120", AM_IDLE_EXIT_S="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert b"stop grace 105 s" in proc.stderr


FAKE_KEY_ID = "AKIAFAKEKEYID0000001"
FAKE_SECRET = "FakeSecretKeyDoNotLog0000000000000000000"
FAKE_TOKEN = "FakeSessionTokenDoNotLog00000000000000000000"


def test_a_debug_log_holds_no_credentials(stack: Stack) -> None:
    """At AM_LOG_LEVEL=DEBUG the AWS libraries would log every request's headers: key id and session token."""
    stack.put_tiles(4, size=64)
    proc = subprocess.run([sys.executable, "-m", "am.worker"], cwd=REPO, timeout=120, capture_output=True,
                          env=stack.environment(AM_LOG_LEVEL="DEBUG", AM_IDLE_EXIT_S="1",
                                                AWS_ACCESS_KEY_ID=FAKE_KEY_ID, AWS_SECRET_ACCESS_KEY=FAKE_SECRET,
                                                AWS_SESSION_TOKEN=FAKE_TOKEN))
    log = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert "4 tile(s) done" in log and " DEBUG " in log  # it did sign requests, and logged at DEBUG
    for secret in (FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN, "Signature=", "X-Amz-Security-Token"):
        assert secret not in log, f"{secret} in the worker's DEBUG log"
