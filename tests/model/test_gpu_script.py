"""The prepared GPU training check runs end to end (on the CPU, at toy size): the script is
time-boxed for short GPU runs, which leave no minutes to spare on a broken script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_script_trains_resnext50_and_measures_it(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path), "SYNTHETIC": "2",
           "VALID": "1", "EPOCHS": "1", "STEPS": "1", "BATCH": "2", "CROP": "64", "QUALITY_SYNTHETIC": "1",
           "WORKERS": "0", "REAL": str(tmp_path / "no-real-samples")}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_resnext50.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "training wall time" in done.stdout and "real samples not found" in done.stdout
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
