"""A device the machine lacks, or a misspelled one, is one clear line naming it, before any work;
and the evaluation command takes the precision options the other model commands take."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import am.evaluate.__main__ as evaluate_cli
from am.errors import InputError
from am.model.build import build_model
from am.model.checkpoint import ModelMeta
from am.model.device import device_problem, resolve_device
from am.model.predict import Predictor
from am.train.data import synthetic_images
from am.train.loop import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
TINY = {"encoder": "tu-mobilenetv3_small_100", "encoder_depth": 5, "decoder_channels": (32, 16, 8, 8, 4)}


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_device_problems_name_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    assert device_problem("cpu") is None and resolve_device("cpu") == torch.device("cpu")
    assert "use cpu or cuda" in device_problem("gpu") and "'gpu'" in device_problem("gpu")
    assert "use cpu or cuda" in device_problem("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in device_problem("cuda") and "use cpu" in device_problem("cuda")
    assert resolve_device(None) == resolve_device("") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_problem("cuda:0") is None
    assert "1 CUDA device(s), cuda:0 to cuda:0" in device_problem("cuda:2")
    with pytest.raises(InputError, match=r"device 'cuda:2': this machine has 1"):
        resolve_device("cuda:2")


def test_predictor_and_training_refuse_a_missing_gpu_before_any_work(no_cuda: None, tmp_path: Path) -> None:
    meta = ModelMeta(**TINY)
    with pytest.raises(InputError, match=r"device 'cuda': torch finds no CUDA device .*use cpu"):
        Predictor(build_model(meta), meta, device="cuda")
    # Refused before the checkpoint is read: this one does not exist.
    with pytest.raises(InputError, match=r"device 'gpu': not a device name; use cpu or cuda"):
        Predictor.from_checkpoint(tmp_path / "missing.pt", device="gpu")
    items = synthetic_images(count=2, size=64, seed=1)
    out = tmp_path / "m.pt"
    with pytest.raises(InputError, match=r"device 'cuda'"):
        train(TrainConfig(out=out, **TINY, epochs=1, steps_per_epoch=1, batch_size=2, crop=64, device="cuda"),
              items[:1], items[1:])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("device", ["gpu", "cuda"])
def test_train_cli_refuses_the_device_before_rendering_data(tmp_path: Path, device: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    started = time.monotonic()
    # Rendering a million 4096 px images would take days: the answer comes first.
    done = subprocess.run([sys.executable, "-m", "am.train", "--synthetic", "1000000", "--synthetic-size", "4096",
                           "--device", device, "--out", str(tmp_path / "m.pt")], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2 and time.monotonic() - started < 100
    assert f"error: --device {device}: " in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())


def test_train_cli_refuses_resume_without_state_before_rendering_data(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "am.train", "--synthetic", "1000000", "--synthetic-size", "4096",
                           "--device", "cpu", "--resume", "--out", str(tmp_path / "m.pt")], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "there is no resume state" in done.stderr and "m.resume" in done.stderr


@pytest.mark.parametrize(("extra", "named"), [
    (["--synthetic", "-2"], "--synthetic -2"),
    (["--synthetic", "1", "--device", "gpu"], "--device gpu"),
    (["--synthetic", "1", "--device", "cpu", "--precision", "fp16"], "--precision fp16"),
    (["--synthetic", "1", "--precision", "fp64"], "--precision"),
])
def test_evaluate_names_a_bad_value(extra: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(extra)
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


def test_evaluate_runs_at_the_precision_asked(tiny_model: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    scores = tmp_path / "scores.json"
    assert evaluate_cli.main(["--model", str(tiny_model), "--synthetic", "1", "--size", "64", "--device", "cpu",
                              "--precision", "fp32", "--threads", "1", "--json", str(scores)]) == 0
    assert json.loads(scores.read_text())["precision"] == "fp32" and ", fp32, tta off" in capsys.readouterr().out
