"""``make sample`` / ``make run`` make the sample dataset again after an interrupted attempt.

An interrupted ``am.synth dataset`` keeps nothing of its run but may leave the dataset folder behind
(holding its lock file); with the folder as make's target, make took the sample as made, and
``make run`` then failed for good on a dataset without source/ until the user removed it by hand.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[1]


def _planned(dataset: Path, target: str) -> str:
    """What ``make -n target`` would run for ``dataset`` (the virtual environment taken as installed)."""
    env = {k: v for k, v in clean_env().items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(["make", "-n", target, f"DATASET={dataset}", "STAMP=Makefile"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["sample", "run"])
def test_a_dataset_folder_left_by_an_interrupted_generation_is_generated_again(tmp_path: Path, target: str) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / ".am-segm.lock").touch()
    assert f"-m am.synth dataset {dataset} " in _planned(dataset, target)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_generated_sample_is_not_generated_again(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    (dataset / "source" / "group01").mkdir(parents=True)
    planned = _planned(dataset, "run")
    assert "am.synth" not in planned
    assert f"-m am.pipeline {dataset} " in planned
