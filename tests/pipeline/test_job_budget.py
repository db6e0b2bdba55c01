"""A job's time budgets are shared among the workers that really run, not those the settings ask for.

Where fewer start (a local worker that dies at start, ECS tasks that find no capacity), a budget
divided among the configured count would end the job while the workers it has are still on time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import pytest

import am.job
from am.dataset import DatasetLayout
from am.errors import JobTimeout
from am.job import TIMEOUT_ADVICE, open_job
from am.settings import Settings
from tests.pipeline.mocked_aws import mocked_backend

JOB = "20261207-101500-abc789"
TILE = 64


class FewRunningLauncher:
    """Asked for any number of workers, has ``running`` of them alive, and none ever reports a tile."""

    def __init__(self, running: int) -> None:
        self.running = running
        self.asked: list[int] = []

    def start(self, count: int, environment: Mapping[str, str]) -> None:
        self.asked.append(count)

    def alive(self) -> int:
        return self.running

    def stop(self) -> None:
        self.running = 0


def _tiles(count: int) -> list[tuple[int, np.ndarray]]:
    return [(index, np.zeros((TILE, TILE), np.uint8)) for index in range(count)]


def test_the_budget_of_a_job_is_shared_among_the_workers_given():
    settings = Settings(workers=4, timeout_base_s=100.0, timeout_per_tile_s=10.0)
    assert settings.job_timeout_s(40) == 100.0 + 10.0 * 40 / 4
    assert settings.job_timeout_s(40, workers=1) == 100.0 + 10.0 * 40
    assert settings.job_timeout_s(40, workers=0) == settings.job_timeout_s(40, workers=1)


def test_a_job_waits_as_long_as_its_one_running_worker_needs(mocked_clients, tmp_path, monkeypatch):
    monkeypatch.setattr(am.job, "RESULT_WAIT_S", 0.2)
    launcher = FewRunningLauncher(running=1)
    settings = Settings(workers=4, tile_size=TILE, tile_overlap=16, tiles_per_message=1, timeout_base_s=0.1,
                        timeout_per_tile_s=1.0)
    with pytest.raises(JobTimeout) as timed_out, \
            open_job(mocked_backend(mocked_clients, launcher), layout=DatasetLayout(tmp_path / "ds"),
                     settings=settings, job_id=JOB, workers=4, show_progress=False) as job:
        job.send("g", _tiles(3))
        job.seal()
        started = time.monotonic()
        job.wait()

    assert launcher.asked == [4]
    # Shared among the 4 asked for, the budget would be 0.1 + 3 / 4 s; the one running worker needs 3.1 s.
    assert time.monotonic() - started >= 3.1
    message = str(timed_out.value)
    assert message.startswith("job did not finish in time: 3 of 3 tile(s) pending after its budget of 3 s for 3 "
                              "tile(s) on 1 worker(s) (3 of the 4 asked for had stopped or never started"), message
    assert message.endswith(TIMEOUT_ADVICE)


def test_a_full_window_waits_as_long_as_its_one_running_worker_needs(mocked_clients, tmp_path, monkeypatch):
    monkeypatch.setattr(am.job, "ROOM_WAIT_S", 0.1)
    launcher = FewRunningLauncher(running=1)
    settings = Settings(workers=4, tile_size=TILE, tile_overlap=16, tiles_per_message=1, max_tiles_in_flight=1,
                        timeout_base_s=0.1, timeout_per_tile_s=2.0)
    with pytest.raises(JobTimeout) as timed_out, \
            open_job(mocked_backend(mocked_clients, launcher), layout=DatasetLayout(tmp_path / "ds"),
                     settings=settings, job_id=JOB, workers=4, show_progress=False) as job:
        started = time.monotonic()
        job.send("g", _tiles(2))  # the second tile waits for room that never comes

    # Shared among the 4 asked for, a window of one tile would get 0.1 + 2 / 4 s; the one running worker 2.1 s.
    assert time.monotonic() - started >= 2.1
    message = str(timed_out.value)
    assert "while 1 were in flight after its budget of 2 s for 1 tile(s) on 1 worker(s) (3 of the 4 asked for" \
        in message, message
    assert message.endswith(TIMEOUT_ADVICE)


def test_a_budget_names_no_missing_worker_where_every_one_runs(mocked_clients, tmp_path, monkeypatch):
    monkeypatch.setattr(am.job, "RESULT_WAIT_S", 0.2)
    settings = Settings(workers=2, tile_size=TILE, tile_overlap=16, tiles_per_message=1, timeout_base_s=0.1,
                        timeout_per_tile_s=0.2)
    with pytest.raises(JobTimeout) as timed_out, \
            open_job(mocked_backend(mocked_clients, FewRunningLauncher(running=2)),
                     layout=DatasetLayout(tmp_path / "ds"), settings=settings, job_id=JOB, workers=2,
                     show_progress=False) as job:
        job.send("g", _tiles(2))
        job.seal()
        job.wait()

    assert str(timed_out.value) == ("job did not finish in time: 2 of 2 tile(s) pending after its budget of 0 s for 2 "
                                    f"tile(s) on 2 worker(s); {TIMEOUT_ADVICE}")
