"""A job that failed, and the clean-up that follows: what is said, and when, and which error wins.

A failed job's clean-up stops the workers first, which takes up to the launcher's stop timeout
when a worker hangs. The failure is said before that wait, Ctrl-C pressed meanwhile cannot turn
the failure into an "interrupted" exit, and a timeout whose worker had to be killed on the stop
says so instead of advising more time. After an interrupt, the final collection warns of reports
left waiting only when some could be.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping

import numpy as np
import pytest

from am.backends import Backend
from am.dataset import DatasetLayout
from am.errors import JobTimeout
from am.job import FINAL_COLLECT_S, TIMEOUT_ADVICE, Job, open_job
from am.launchers.local import STOP_TIMEOUT_S
from am.messages import TileResult, tiles_key
from am.settings import Settings
from am.tilepack import pack_masks
from am.transport.queue import Queue
from am.transport.storage import Storage
from tests.pipeline.mocked_aws import mocked_backend

JOB = "20261206-101500-def456"
TILE = 64


class StoppingLauncher:
    """Workers that are never really started. ``stop`` sends ``signals`` SIGINTs to this process (a
    user pressing Ctrl-C while it waits); with ``hangs`` the worker was running and had to be killed."""

    def __init__(self, *, signals: int = 0, hangs: bool = False) -> None:
        self.signals = signals
        self.hangs = hangs
        self.stopped = False
        self.killed = False

    def start(self, count: int, environment: Mapping[str, str]) -> None:
        pass

    def alive(self) -> int:
        return 0 if self.stopped else 1

    def exit_codes(self) -> list[int | None]:
        if self.killed or (self.stopped and self.hangs):
            return [-signal.SIGKILL]
        return [0] if self.stopped else [None]

    def stop(self) -> None:
        for _ in range(self.signals):
            signal.raise_signal(signal.SIGINT)
        self.stopped = True

    def kill(self) -> None:
        self.killed = True


def _timeout() -> JobTimeout:
    return JobTimeout(f"job did not finish in time: 2 of 2 tile(s) pending; {TIMEOUT_ADVICE}", {"g/0000": "timed out"})


def _send_two_tiles(job: Job) -> None:
    job.send("g", [(0, np.zeros((TILE, TILE), np.uint8)), (1, np.zeros((TILE, TILE), np.uint8))])
    job._finish_sending()


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_failure_is_said_before_the_clean_up_and_stays_the_error_when_it_is_cut_short(mocked_clients, ctrl_c,
                                                                                       tmp_path, caplog):
    caplog.set_level(logging.INFO)
    launcher = StoppingLauncher(signals=2)
    settings = Settings(tile_size=TILE, tile_overlap=16, tiles_per_message=1)
    with pytest.raises(JobTimeout, match="did not finish in time"), \
            open_job(mocked_backend(mocked_clients, launcher), layout=DatasetLayout(tmp_path / "ds"), settings=settings,
                     job_id=JOB, workers=1, show_progress=False) as job:
        _send_two_tiles(job)
        raise _timeout()

    said = _messages(caplog)
    failed = next(i for i, m in enumerate(said) if f"job {JOB} failed: job did not finish in time" in m)
    cleaning = next(i for i, m in enumerate(said) if "is cleaning up" in m)
    assert failed < cleaning, said
    assert TIMEOUT_ADVICE not in said[failed], "advice given before the stop could find a hung worker"
    # Nothing is collected after a failure, and the wait is the stop's own.
    assert "saving the masks" not in said[cleaning]
    assert f"up to about {STOP_TIMEOUT_S:.0f} s" in said[cleaning]
    assert any("cleaning up after it failed, so it quit without finishing" in m for m in said), said
    assert launcher.killed


def test_a_timeout_whose_worker_had_to_be_killed_says_it_did_not_respond(mocked_clients, tmp_path):
    settings = Settings(tile_size=TILE, tile_overlap=16, tiles_per_message=1)
    with pytest.raises(JobTimeout) as timed_out, \
            open_job(mocked_backend(mocked_clients, StoppingLauncher(hangs=True)),
                     layout=DatasetLayout(tmp_path / "ds"), settings=settings, job_id=JOB, workers=1,
                     show_progress=False) as job:
        _send_two_tiles(job)
        raise _timeout()

    message = str(timed_out.value)
    assert message.startswith("job did not finish in time: 2 of 2 tile(s) pending; worker(s) 0 did not respond")
    assert f"not stopped {STOP_TIMEOUT_S:.0f} s after being asked to" in message
    assert TIMEOUT_ADVICE not in message
    assert timed_out.value.failed == {"g/0000": "timed out"}


def test_a_timeout_whose_workers_stopped_keeps_its_advice(mocked_clients, tmp_path):
    settings = Settings(tile_size=TILE, tile_overlap=16, tiles_per_message=1)
    with pytest.raises(JobTimeout, match=TIMEOUT_ADVICE), \
            open_job(mocked_backend(mocked_clients, StoppingLauncher()), layout=DatasetLayout(tmp_path / "ds"),
                     settings=settings, job_id=JOB, workers=1, show_progress=False) as job:
        _send_two_tiles(job)
        raise _timeout()


def test_ctrl_c_during_an_interrupted_jobs_clean_up_states_its_real_length(mocked_clients, ctrl_c, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    settings = Settings(tile_size=TILE, tile_overlap=16, tiles_per_message=1)
    with pytest.raises(KeyboardInterrupt), \
            open_job(mocked_backend(mocked_clients, StoppingLauncher(signals=1)), layout=DatasetLayout(tmp_path / "ds"),
                     settings=settings, job_id=JOB, workers=1, show_progress=False) as job:
        _send_two_tiles(job)
        signal.raise_signal(signal.SIGINT)
    [cleaning] = [m for m in _messages(caplog) if "is cleaning up" in m]
    assert "saving the masks they reported" in cleaning
    assert f"up to about {STOP_TIMEOUT_S + FINAL_COLLECT_S:.0f} s" in cleaning


def _report_done(job: Job, backend: Backend, tiles: range) -> None:
    """A worker's reports of ``tiles`` as done, with their masks, on the job's results queue."""
    storage = Storage(backend.clients.s3(), threads=2)
    reports = []
    for index in tiles:
        storage.put_bytes(backend.output_bucket, tiles_key(JOB, "g", (index,)),
                          pack_masks(np.zeros((1, TILE, TILE), np.uint8)))
        reports.append(TileResult(job=JOB, group="g", tiles=(index,), status="done", attempt=1, worker="w").to_json())
    queue = Queue(backend.clients.sqs(), job.results_url)
    for start in range(0, len(reports), 10):
        queue.send_many(reports[start:start + 10])


def test_the_final_collection_warns_only_when_reports_could_still_be_waiting(mocked_clients, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="am.job")
    backend = mocked_backend(mocked_clients, StoppingLauncher())
    settings = Settings(tile_size=TILE, tile_overlap=16, tiles_per_message=1)
    with open_job(backend, layout=DatasetLayout(tmp_path / "ds"), settings=settings, job_id=JOB, workers=1,
                  show_progress=False) as job:
        job.send("g", [(index, np.zeros((TILE, TILE), np.uint8)) for index in range(30)])
        job._finish_sending()
        # The interrupt cut a receive short just now, as it does when the workers stop at once:
        # reports it may have taken stay hidden for about the whole budget, then nothing comes.
        job._collector.hidden_until = time.monotonic() + FINAL_COLLECT_S - 0.1
        started = time.monotonic()
        assert job.collect_reported() == 0
        assert time.monotonic() - started < FINAL_COLLECT_S + 1.5, "slower than the budget"
        assert not [m for m in _messages(caplog) if "stopped collecting" in m], "warned with nothing left waiting"

        # Reports still coming when the budget is spent: some may be left, and that is said.
        _report_done(job, backend, range(30))
        assert job.collect_reported(budget_s=0.01) < 30
        assert [m for m in _messages(caplog) if "stopped collecting after" in m]
