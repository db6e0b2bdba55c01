"""Drive ``python -m am.pipeline`` as a user does and watch it from outside: pids, ports, logs, leftovers.

The pipeline runs as a real subprocess with real worker subprocesses on the embedded endpoint
(or an endpoint the test owns). Its stderr goes to a file, so a test can wait for a log line,
act (kill a worker, send SIGINT) and still read everything afterwards::

    with PipelineRun(dataset, model, tmp_path) as run:
        pid = run.wait_for_worker(0)
        os.kill(pid, signal.SIGKILL)
        assert run.wait(timeout=120) == 0
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import psutil
import pytest

from am.imageio import read_image
from am.tiling import Stitcher, TilePlan
from am.transport.queue import Queue
from am.transport.storage import Storage
from am.worker.worker import Worker
from tests.environment import clean_env
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
TILE_ARGS = ("--tile-size", "128", "--tile-overlap", "32")
WORKER_LINE = re.compile(r"started worker (\d+) \(pid (\d+)\), log (\S+)")
ENDPOINT_LINE = re.compile(r"endpoint listening on (http://[\d.]+:\d+)")
JOB_LINE = re.compile(r"job \S+: (\d+) tile\(s\) on the")


def base_environment(tmp_path: Path, marker: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a pipeline under test: no AM_*/AWS_* from the shell, a private cache, a marker."""
    env = clean_env()
    env.update({"PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
                "AMSEGM_TEST_MARKER": marker, "AM_IDLE_EXIT_S": "60"})
    env.update(extra or {})
    return env


class PipelineRun:
    """One ``python -m am.pipeline`` subprocess; killed on exit from the ``with`` block if still running."""

    def __init__(self, dataset: Path, model: Path, tmp_path: Path, *args: str, env: Mapping[str, str] | None = None,
                 workers: int = 2, tile_args: tuple[str, ...] = TILE_ARGS, name: str = "run") -> None:
        self.marker = uuid.uuid4().hex
        self.stderr_path = tmp_path / f"{name}-{self.marker[:8]}.stderr"
        self.stdout_path = tmp_path / f"{name}-{self.marker[:8]}.stdout"
        command = [sys.executable, "-m", "am.pipeline", str(dataset), "--workers", str(workers), "--model",
                   str(model), "--no-progress", *tile_args, *args]
        # A shell starts background jobs with SIGINT ignored, and a child inherits that: the pipeline
        # must get Ctrl-C as it would at a terminal, however the test suite itself was started.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
                self.proc = subprocess.Popen(command, env=base_environment(tmp_path, self.marker, env), cwd=REPO,
                                             stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        finally:
            signal.signal(signal.SIGINT, previous)
        self.started = time.monotonic()

    # -- reading ---------------------------------------------------------------------------

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def workers(self) -> dict[int, tuple[int, Path]]:
        """Worker number -> (pid, log path), from the orchestrator's log."""
        return {int(n): (int(pid), Path(log)) for n, pid, log in WORKER_LINE.findall(self.stderr)}

    def endpoint_url(self) -> str:
        found = ENDPOINT_LINE.findall(self.stderr)
        return found[0] if found else ""

    def job_tiles(self) -> list[int]:
        """Tiles sent out by each job this run started (one entry per job)."""
        return [int(n) for n in JOB_LINE.findall(self.stderr)]

    # -- waiting ---------------------------------------------------------------------------

    def wait_until(self, predicate, *, timeout: float, what: str, poll_s: float = 0.02) -> None:
        """``waiting.wait_until``, giving up as soon as the pipeline exits; failures show its log."""
        def ready() -> bool:
            if predicate():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"pipeline exited with {self.proc.returncode} while waiting for {what}:\n"
                                     f"{self.stderr[-4000:]}")
            return False

        wait_until(ready, timeout=timeout, what=what, poll_s=poll_s, detail=lambda: self.stderr[-4000:])

    def wait_for_worker(self, number: int, *, timeout: float = 60) -> int:
        self.wait_until(lambda: number in self.workers(), timeout=timeout, what=f"worker {number}")
        return self.workers()[number][0]

    def wait_for_first_worker_logging(self, text: str, *, what: str, timeout: float = 90) -> tuple[int, Path]:
        """Wait until any worker's log holds ``text``; the pid and log of the first (by number) that does.

        Waiting for a particular worker instead can miss the job: on a loaded machine the other
        one may load its model faster and take every tile.
        """
        def first() -> tuple[int, Path] | None:
            return next(((pid, log) for _number, (pid, log) in sorted(self.workers().items())
                         if log.is_file() and text in log.read_text(errors="replace")), None)

        self.wait_until(lambda: first() is not None, timeout=timeout, what=what)
        found = first()
        assert found is not None
        return found

    def wait_for_first_batch(self, *, timeout: float = 90) -> tuple[int, Path]:
        """Wait until any worker has finished a batch; the pid and log of the first that did.

        That worker is the one taking the job's messages, and the job has just begun, so it still
        holds the batches it prefetched: a fault injected now lands mid-job, whichever worker
        happened to load its model first.
        """
        # A worker logs "batch of ..." after each batch it settles.
        return self.wait_for_first_worker_logging("batch of", what="a finished batch in a worker's log",
                                                  timeout=timeout)

    def wait(self, *, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"pipeline still running after {timeout} s; its threads' stacks follow its log:\n"
                                 f"{self.stacks()[-12000:]}") from exc

    def stacks(self) -> str:
        """The log, ending with every thread's stack (the pipeline prints them on SIGUSR1): where a hang is."""
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        return self.stderr

    # -- context ---------------------------------------------------------------------------

    def __enter__(self) -> PipelineRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for proc in processes_with_marker(self.marker):
            proc.kill()


def run_to_end(dataset: Path, model: Path, tmp_path: Path, *args: str, timeout: float = 240,
               **kwargs) -> PipelineRun:
    """Run the pipeline to its end; the returned run has ``proc.returncode`` set."""
    with PipelineRun(dataset, model, tmp_path, *args, **kwargs) as run:
        run.wait(timeout=timeout)
    return run


def processes_with_marker(marker: str) -> list[psutil.Process]:
    """Every process (orchestrator or worker) started with this run's marker in its environment."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("AMSEGM_TEST_MARKER") == marker:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def port_is_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def assert_nothing_left(run: PipelineRun) -> None:
    """No worker or orchestrator process of the run is alive, and its embedded endpoint port is closed."""
    wait_until(lambda: not processes_with_marker(run.marker), timeout=10, poll_s=0.2,
               what="the run's processes to end",
               detail=lambda: f"processes left running: {[p.pid for p in processes_with_marker(run.marker)]}")
    url = run.endpoint_url()
    if url:
        assert port_is_closed(url), f"endpoint {url} still accepts connections"


# ---------------------------------------------------------------------------------- datasets


def lattice_image(height: int, width: int, *, pitch: int = 36, radius: int = 9, seed: int = 0) -> np.ndarray:
    """A speckled grey image with bright round marks on a square lattice."""
    rng = np.random.default_rng(seed)
    image = rng.normal(90, 12, size=(height, width)).clip(0, 255).astype(np.uint8)
    for y in range(pitch // 2, height, pitch):
        for x in range(pitch // 2, width, pitch):
            cv2.circle(image, (x, y), radius, 200, -1)
    return image


def make_dataset(root: Path, groups: Mapping[str, tuple[int, int]], *, seed: int = 0) -> Path:
    """``root/source/<group>/image.png`` with a lattice image of the given (height, width) per group."""
    for number, (group, (height, width)) in enumerate(groups.items()):
        folder = root / "source" / group
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / "image.png"), lattice_image(height, width, seed=seed + number))
    return root


def plan_of(dataset: Path, group: str) -> TilePlan:
    meta = json.loads((dataset / "tiles" / group / "meta.json").read_text())
    return TilePlan.from_json(json.dumps(meta["plan"]))


def mask_files(dataset: Path, group: str) -> list[Path]:
    folder = dataset / "tiles" / group / "mask"
    return sorted(folder.glob("[0-9][0-9][0-9][0-9].png")) if folder.is_dir() else []


# A pixel whose mark probability lies this close to the model's threshold may flip with the batch
# size of the forward pass (CPU kernels round differently for 1 and 4 tiles); the untrained test
# model has many such pixels. Anywhere else, a mask must match the model's prediction exactly.
BORDERLINE = 1e-3


def _stitch(plan: TilePlan, masks: dict[int, np.ndarray]) -> np.ndarray:
    stitcher = Stitcher(plan)
    for index, mask in masks.items():
        stitcher.add(index, mask)
    return np.where(stitcher.finalize() > 0, 255, 0).astype(np.uint8)


def assert_same_as_undisturbed(dataset: Path, group: str, predictor) -> None:
    """The group's mask tiles and stitched mask are what an undisturbed run gives.

    Each mask tile must be the model's prediction for that exact tile (up to pixels on the
    threshold, see BORDERLINE), and mask.tiff must be those tiles stitched: a lost, blank, stale
    or misplaced tile fails.
    """
    plan = plan_of(dataset, group)
    got = {}
    for tile in plan.tiles:
        source = read_image(dataset / "tiles" / group / "source" / f"{tile.index:04d}.png")
        mask_path = dataset / "tiles" / group / "mask" / f"{tile.index:04d}.png"
        assert mask_path.is_file(), f"mask tile {mask_path} is missing"
        got[tile.index] = read_image(mask_path)
        proba = predictor.predict_proba(source[None])[0]
        want = np.where(proba >= predictor.meta.threshold, 255, 0).astype(np.uint8)
        differ = got[tile.index] != want
        assert not (differ & (np.abs(proba - predictor.meta.threshold) > BORDERLINE)).any(), \
            f"mask tile {group}/{tile.index:04d} is not the model's prediction ({int(differ.sum())} pixels differ)"
    stitched = read_image(dataset / "tiles_stitched" / group / "mask.tiff")
    assert np.array_equal(stitched, _stitch(plan, got)), f"{group}: mask.tiff is not its tiles stitched"


# ---------------------------------------------------------------------------------- in-process workers


class ThreadLauncher:
    """A launcher whose workers are the real Worker class on threads of this process.

    ``clients`` gives each worker its own S3 and SQS clients (a ClientFactory, or one that injects
    faults); every worker answers with ``predictor``. ``events``, when given, records
    "start workers" and "stop workers" among a test's other events.
    """

    def __init__(self, clients: Any, predictor: Any, *, input_bucket: str, output_bucket: str, queue_url: str,
                 events: list[str] | None = None) -> None:
        self._clients = clients
        self._predictor = predictor
        self._buckets = (input_bucket, output_bucket)
        self._queue_url = queue_url
        self._events = events if events is not None else []
        self.workers: list[Worker] = []
        self.threads: list[threading.Thread] = []
        self.stopped = False

    def start(self, count: int, environment: Mapping[str, str]) -> None:
        self._events.append("start workers")
        for number in range(count):
            sqs = self._clients.sqs()
            worker = Worker(Queue(sqs, self._queue_url), Storage(self._clients.s3(), threads=4),
                            lambda uri: self._predictor, input_bucket=self._buckets[0],
                            output_bucket=self._buckets[1], results=partial(Queue, sqs), batch_size=4,
                            idle_exit_s=30, visibility_timeout_s=30, worker_id=f"thread-{number}")
            thread = threading.Thread(target=worker.run, name=f"worker-{number}", daemon=True)
            thread.start()
            self.workers.append(worker)
            self.threads.append(thread)

    def alive(self) -> int:
        return sum(thread.is_alive() for thread in self.threads)

    def stop(self) -> None:
        self._events.append("stop workers")
        self.stopped = True
        for worker in self.workers:
            worker.stop()
        for thread in self.threads:
            thread.join(timeout=60)


@contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """Make ``folder`` unwritable for this process; yields the word the error will carry."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield "Permission denied"
        finally:
            folder.chmod(0o755)
        return
    # Root ignores permission bits; the immutable flag stops root too (ext4 and most Linux file systems).
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root, where permissions do not apply, and chattr +i is not available here")
    try:
        yield "Operation not permitted"
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)
