"""The prepared GPU training check runs end to end (on the CPU, at toy size): the script is
time-boxed for short GPU runs, which leave no minutes to spare on a broken script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_gpu_script_trains_resnext50_and_measures_it(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path), "SYNTHETIC": "2",
           "VALID": "1", "EPOCHS": "1", "STEPS": "1", "BATCH": "2", "CROP": "64", "QUALITY_SYNTHETIC": "1",
           "WORKERS": "0", "SKIP_REAL": "1", "BENCH": "1", "BENCH_BATCH": "2", "BENCH_TILES": "2"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_resnext50.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "training wall time" in done.stdout and "real samples skipped" in done.stdout
    speed = json.loads((tmp_path / "bench.json").read_text())
    assert speed["encoder"] == "resnext50_32x4d" and speed["model_tiles_per_s"] > 0 and speed["trained"]
    quality = json.loads((tmp_path / "quality.json").read_text())
    assert quality["encoder"] == "resnext50_32x4d"
    assert 0.0 <= quality["synthetic"]["dice_pooled"] <= 1.0
    assert (tmp_path / "resnext50.metrics.csv").is_file()


def test_gpu_script_reports_a_failed_training_run(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path), "SYNTHETIC": "2",
           "EPOCHS": "1", "STEPS": "1", "BATCH": "0"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_resnext50.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "training failed" in done.stderr and (tmp_path / "train.log").is_file()


def test_gpu_script_stops_an_overrunning_training_and_still_measures_its_best_checkpoint(tmp_path):
    # 200 one-step epochs outlast a 25 s watchdog, as a run stalled inside an epoch would outlast MINUTES.
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path), "SYNTHETIC": "2",
           "VALID": "1", "EPOCHS": "200", "STEPS": "1", "BATCH": "2", "CROP": "64", "QUALITY_SYNTHETIC": "1",
           "WORKERS": "0", "SKIP_REAL": "1", "WATCHDOG_S": "25"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_resnext50.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "outlived the 25 s watchdog and was stopped" in done.stderr
    log = (tmp_path / "train.log").read_text()
    assert "most recent call first" in log, "the watchdog asks for every thread's stack before stopping the run"
    quality = json.loads((tmp_path / "quality.json").read_text())
    assert quality["encoder"] == "resnext50_32x4d"
    assert 1 <= len(json.loads((tmp_path / "resnext50.metrics.json").read_text())["history"]) < 200
    assert not (tmp_path / ".watchdog-fired").exists()


def test_gpu_script_stops_before_training_when_the_real_samples_are_missing(tmp_path):
    missing = tmp_path / "no-real-samples"
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "REAL": str(missing)}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_resnext50.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"REAL={missing}" in done.stderr and "SKIP_REAL=1" in done.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_model_target_can_use_the_machines_own_python_without_a_venv():
    # As from a user's shell: under `make test` the inherited MAKELEVEL adds "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    plan = subprocess.run(["make", "--no-print-directory", "-n", "gpu-model", "AM_SYSTEM_PYTHON=1",
                           "PYTHON=/opt/gpu/bin/python3"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert plan.strip() == "PYTHON=/opt/gpu/bin/python3 bash benchmarks/gpu_resnext50.sh"
    assert "venv" not in plan and "pip" not in plan


def test_real_samples_and_wheels_copied_into_the_checkout_are_ignored_by_git():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", ".real/crop1.png", ".whl/smp.whl"], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=False).stdout.split()
    assert ignored == [".real/crop1.png", ".whl/smp.whl"]
