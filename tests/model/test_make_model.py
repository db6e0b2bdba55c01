"""``make model``'s six runs are targets of their own: a rerun after an interruption skips the runs done
and resumes the interrupted one, instead of starting eight hours of training over."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNS = ("base", "footprint", "visible", "gaps", "blobs", "default")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def planned(tmp_path: Path) -> list[str]:
    """The commands ``make model`` would run now (``make -n``), with runs/ at ``tmp_path / 'runs'``."""
    venv = tmp_path / "venv"
    venv.mkdir(exist_ok=True)
    (venv / ".installed").touch()  # newer than setup.py: nothing to install
    result = subprocess.run(["make", "-n", "-s", "-C", str(REPO), "model", f"VENV={venv}",
                             f"MODEL_RUNS={tmp_path / 'runs'}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_a_fresh_start_trains_every_run_each_from_the_one_before(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    commands = planned(tmp_path)
    trains = [c for c in commands if "-m am.train" in c]
    assert len(trains) == len(RUNS) and "benchmarks/model_quality.py" in commands[-1]
    for previous, command, run in zip((None, *RUNS[:-1]), trains, RUNS, strict=True):
        assert f"--out {runs / run}.pt" in command and f"touch {runs / run}.done" in command
        assert ("--init" not in command) if previous is None else (f"--init {runs / previous}.pt" in command)
        assert "--resume" not in command


def test_a_rerun_skips_the_runs_done_and_resumes_the_interrupted_one(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for run in RUNS[:2]:
        (runs / f"{run}.pt").touch()
        (runs / f"{run}.done").touch()
    # Interrupted in an epoch of the third run: its best epoch so far and its state are on disk.
    (runs / "visible.pt").touch()
    (runs / "visible.resume").touch()
    trains = [c for c in planned(tmp_path) if "-m am.train" in c]
    assert len(trains) == 4
    assert f"--out {runs / 'visible'}.pt" in trains[0] and "--resume" in trains[0]
    assert not any("--resume" in c for c in trains[1:])


def test_a_run_that_finished_but_was_not_marked_done_is_resumed_not_trained_over(tmp_path: Path) -> None:
    # am.train refuses a new run over an earlier run's files; --resume on a finished run says so and exits 0.
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "base.pt").touch()
    (runs / "base.metrics.json").touch()
    trains = [c for c in planned(tmp_path) if "-m am.train" in c]
    assert f"--out {runs / 'base'}.pt" in trains[0] and "--resume" in trains[0]
    assert not any("--resume" in c for c in trains[1:])
