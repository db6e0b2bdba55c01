"""A precision the local workers' device cannot run (AM_PRECISION=fp16 without CUDA) is refused before
any work: nothing normalised or tiled, no worker started, a message naming the variable, its value and
what to use instead. On the aws backend the workers run on GPU machines and never see this
environment, so nothing is refused there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faults.harness import make_dataset

from am.cli import EXIT_ERROR
from am.errors import ConfigError
from am.prepare import DEFAULT_WORKER_MASK_SETTINGS, worker_mask_settings
from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]


def test_the_pipeline_refuses_fp16_for_local_workers_without_cuda_before_any_work(tmp_path):
    root = make_dataset(tmp_path / "ds", {"g1": (200, 200)})
    # CUDA_VISIBLE_DEVICES="" hides any GPU: this machine's workers would run on the CPU.
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"), AM_PRECISION="fp16", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "am.pipeline", str(root), "--no-register", "--workers", "1", "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_ERROR, done.stderr
    assert "AM_PRECISION = 'fp16' cannot be used on this machine" in done.stderr, done.stderr
    assert "needs a CUDA device, not cpu" in done.stderr and "set AM_PRECISION to auto or fp32" in done.stderr
    assert "workers stopped" not in done.stderr and "rerun the same command to resume" not in done.stderr
    # The dataset lock's file stays by design; nothing else was made (no normalised image, no tiles).
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["source"], list(root.iterdir())


def test_local_workers_settings_are_checked_against_this_machines_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^AM_PRECISION = 'fp16' cannot be used on this machine .*set AM_PRECISION "
                                          r"to auto or fp32.*the local workers read it"):
        worker_mask_settings({"AM_PRECISION": "fp16"}, backend="local")
    for precision in ("auto", "fp32", "bf16"):
        assert worker_mask_settings({"AM_PRECISION": precision}, backend="local")["precision"] == precision
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert worker_mask_settings({"AM_PRECISION": "fp16"}, backend="local")["precision"] == "fp16"


def test_aws_workers_are_not_held_to_this_machines_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_mask_settings({"AM_PRECISION": "fp16"}, backend="aws") == DEFAULT_WORKER_MASK_SETTINGS
