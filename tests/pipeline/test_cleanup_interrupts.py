"""Ctrl-C pressed again while an interrupted job cleans up.

The first Ctrl-C interrupts the job; the clean-up then stops the workers (seconds), collects the
masks they reported and deletes the job's results queue and S3 objects. A second Ctrl-C in that
window (people press it again; ``timeout -s INT`` delivers its signal twice) must not skip those
steps; a third quits at once, and the error then names what was left behind, truthfully.

The signals are raised in this process from the launcher's ``stop``, the slow step, exactly
where a user's second Ctrl-C lands.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping

import numpy as np
import pytest

from am.backends import Backend
from am.dataset import DatasetLayout
from am.errors import CleanupIncomplete
from am.job import open_job
from am.messages import TileResult, tiles_key
from am.settings import Settings
from am.tilepack import pack_masks
from am.transport.queue import Queue
from am.transport.storage import Storage
from tests.pipeline.mocked_aws import mocked_backend

JOB = "20261124-101500-abc123"
TILE = 64


class SignallingLauncher:
    """Workers that are never really started; ``stop`` delivers ``signals`` SIGINTs to this process first."""

    def __init__(self, signals: int) -> None:
        self.signals = signals
        self.stops = 0

    def start(self, count: int, environment: Mapping[str, str]) -> None:
        pass

    def alive(self) -> int:
        return 1

    def exit_codes(self) -> list[int | None]:
        return [None]

    def stop(self) -> None:
        self.stops += 1
        for _ in range(self.signals):
            signal.raise_signal(signal.SIGINT)


def _interrupted_job(backend: Backend, layout: DatasetLayout, settings: Settings) -> str:
    """Send two tiles, have a worker report the first as done, then Ctrl-C; returns the results queue URL."""
    storage = Storage(backend.clients.s3(), threads=2)
    with open_job(backend, layout=layout, settings=settings, job_id=JOB, workers=1, show_progress=False) as job:
        job.send("g", [(0, np.zeros((TILE, TILE), np.uint8)), (1, np.zeros((TILE, TILE), np.uint8))])
        job._finish_sending()
        mask = np.zeros((1, TILE, TILE), np.uint8)
        mask[0, 5:9, 5:9] = 255
        storage.put_bytes(backend.output_bucket, tiles_key(JOB, "g", (0,)), pack_masks(mask))
        report = TileResult(job=JOB, group="g", tiles=(0,), status="done", attempt=1, worker="w")
        Queue(backend.clients.sqs(), job.results_url).send_many([report.to_json()])
        signal.raise_signal(signal.SIGINT)  # the first Ctrl-C
    raise AssertionError("the first Ctrl-C did not interrupt the job")


def _job_objects(backend: Backend) -> list[str]:
    storage = Storage(backend.clients.s3(), threads=2)
    return [key for bucket in (backend.input_bucket, backend.output_bucket)
            for key in storage.list_keys(bucket, f"{JOB}/")]


def _results_queues(backend: Backend) -> list[str]:
    return [url for url in backend.clients.sqs().list_queues().get("QueueUrls", []) if url.endswith(JOB)]


def test_a_second_ctrl_c_during_the_clean_up_does_not_skip_it(mocked_clients, ctrl_c, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="am.job")
    launcher = SignallingLauncher(signals=1)
    backend = mocked_backend(mocked_clients, launcher, name="local")
    layout = DatasetLayout(tmp_path / "ds")
    settings = Settings(tile_size=TILE, tile_overlap=16, tiles_per_message=1)
    with pytest.raises(KeyboardInterrupt):
        _interrupted_job(backend, layout, settings)

    assert launcher.stops == 1
    assert "is cleaning up" in caplog.text and "Press Ctrl-C again" in caplog.text
    assert layout.tile_mask("g", 0).is_file(), "the mask reported before the interrupt was not collected"
    assert not layout.tile_mask("g", 1).exists()
    assert _results_queues(backend) == [], "the job's results queue was left behind"
    assert _job_objects(backend) == [], "the job's S3 objects were left behind"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the Ctrl-C handler was not restored"


def test_ctrl_c_twice_more_quits_at_once_and_names_what_it_left_behind(mocked_clients, ctrl_c, tmp_path):
    launcher = SignallingLauncher(signals=2)
    backend = mocked_backend(mocked_clients, launcher, name="aws")
    settings = Settings(tile_size=TILE, tile_overlap=16, tiles_per_message=1)
    with pytest.raises(CleanupIncomplete) as quit_early:
        _interrupted_job(backend, DatasetLayout(tmp_path / "ds"), settings)

    message = str(quit_early.value)
    [results_url] = _results_queues(backend)
    left = _job_objects(backend)
    assert left, "nothing was left behind: the test proves nothing"
    assert f"the results queue {results_url}" in message
    assert f"s3://{backend.input_bucket}/{JOB}/" in message and f"s3://{backend.output_bucket}/{JOB}/" in message
    assert "ECS worker tasks" in message and "rerun the same command to resume" in message
    assert "cleaned up" not in message
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_the_clean_up_of_a_finished_job_lets_it_finish_then_interrupts(mocked_clients, ctrl_c, tmp_path):
    launcher = SignallingLauncher(signals=1)
    backend = mocked_backend(mocked_clients, launcher, name="local")
    settings = Settings(tile_size=TILE, tile_overlap=16)
    with pytest.raises(KeyboardInterrupt), \
            open_job(backend, layout=DatasetLayout(tmp_path / "ds"), settings=settings, job_id=JOB, workers=1,
                     show_progress=False) as job:
        job.send("g", [(0, np.zeros((TILE, TILE), np.uint8))])
        job._finish_sending()
        # Nothing more to wait for: the job ends normally and its clean-up begins.
    assert _results_queues(backend) == [] and _job_objects(backend) == []


def test_without_a_terminal_signal_handler_nothing_is_installed(mocked_clients, tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        backend = mocked_backend(mocked_clients, SignallingLauncher(signals=0), name="local")
        with open_job(backend, layout=DatasetLayout(tmp_path / "ds"), settings=Settings(), job_id=JOB, workers=1,
                      show_progress=False):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_guard_is_left_out_off_the_main_thread(mocked_clients, tmp_path):
    import threading

    seen: list[object] = []
    backend = mocked_backend(mocked_clients, SignallingLauncher(signals=0), name="local")

    def run() -> None:
        with open_job(backend, layout=DatasetLayout(tmp_path / "ds"), settings=Settings(), job_id=JOB, workers=1,
                      show_progress=False):
            seen.append(signal.getsignal(signal.SIGINT))

    handler = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert seen == [handler]
