"""Whoever sends SIGTERM says when SIGKILL follows (AM_STOP_TIMEOUT_S); the worker's grace ends before it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from am.launchers.local import STOP_TIMEOUT_S, LocalLauncher
from am.worker.config import STOP_RELEASE_MARGIN_S, WorkerConfig

BASE_ENV = {"AM_QUEUE_URL": "q", "AM_INPUT_BUCKET": "in", "AM_OUTPUT_BUCKET": "out"}

# Stands in for `python -m am.worker`: reads its grace as the worker does, and on SIGTERM spends all of
# it on a batch before giving the batch back and exiting 0, as a worker with a slow batch does.
FAKE_WORKER = """\
#!{python}
import os, signal, sys, time
from pathlib import Path
from am.worker.config import WorkerConfig

config = WorkerConfig.from_environ({{**os.environ, **{base}}})
out = Path(os.environ["FAKE_WORKER_OUT"])
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
out.write_text("running")
while not stopping:
    time.sleep(0.02)
time.sleep(config.stop_grace_s)
out.write_text(f"released after {{config.stop_grace_s}} s")
sys.exit(0)
"""


@pytest.mark.parametrize("timeout_s, grace_s", [(None, 25.0), ("120", 105.0), ("30", 15.0), ("10", 0.0)])
def test_the_grace_is_the_stop_timeout_less_the_release_margin(timeout_s: str | None, grace_s: float) -> None:
    env = BASE_ENV if timeout_s is None else {**BASE_ENV, "AM_STOP_TIMEOUT_S": timeout_s}
    assert WorkerConfig.from_environ(env).stop_grace_s == grace_s


def test_local_workers_are_told_a_deadline_that_leaves_them_time_to_release() -> None:
    told = WorkerConfig.from_environ({**BASE_ENV, "AM_STOP_TIMEOUT_S": str(STOP_TIMEOUT_S)})
    assert told.stop_grace_s >= 25
    assert STOP_TIMEOUT_S - told.stop_grace_s == STOP_RELEASE_MARGIN_S


def test_a_worker_spending_its_whole_grace_is_not_killed_by_the_local_launcher(tmp_path: Path) -> None:
    # A user's own AM_STOP_TIMEOUT_S must not reach the worker: the launcher's deadline is what counts.
    launcher, out = _running_fake_worker(tmp_path, {"AM_STOP_TIMEOUT_S": "600"},
                                         stop_timeout_s=STOP_RELEASE_MARGIN_S + 2)

    started = time.monotonic()
    launcher.stop()

    assert launcher.exit_codes() == [0], launcher.log_tail()
    assert out.read_text() == "released after 2.0 s"
    assert time.monotonic() - started >= 2


def test_kill_ends_a_worker_at_once_without_waiting_for_its_grace(tmp_path: Path) -> None:
    """A user who insists on quitting a clean-up: the launcher's kill does not wait out the stop deadline."""
    launcher, out = _running_fake_worker(tmp_path, {})

    started = time.monotonic()
    launcher.kill()

    assert launcher.exit_codes() == [-9] and launcher.alive() == 0
    assert time.monotonic() - started < STOP_RELEASE_MARGIN_S
    assert out.read_text() == "running", "the worker ran its grace before it was killed"
    launcher.stop()  # nothing left to stop: no wait, no error


def _running_fake_worker(tmp_path: Path, extra_env: dict[str, str],
                         **launcher_options: float) -> tuple[LocalLauncher, Path]:
    """One fake worker started by a LocalLauncher, once it is running; ``out`` is where it writes how it ended."""
    script = tmp_path / "fake-python"
    script.write_text(FAKE_WORKER.format(python=sys.executable, base=BASE_ENV))
    script.chmod(0o755)
    out = tmp_path / "out.txt"
    launcher = LocalLauncher(log_dir=tmp_path / "logs", python=str(script),
                             base_environment={**os.environ, "FAKE_WORKER_OUT": str(out), **extra_env},
                             **launcher_options)
    launcher.start(1, {})
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.exists(), launcher.log_tail()
    return launcher, out
