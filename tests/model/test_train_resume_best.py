"""A resume keeps the run's best checkpoint: it never reports a checkpoint that is not there, writes
it again from the resume state's copy where it went missing, and refuses clearly where it cannot.
Also: a resume names its data folder however it is spelled, and says in few words what differs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

import am.train.__main__ as train_cli
import am.train.loop as loop
from am.errors import CheckpointError
from am.model.checkpoint import load_checkpoint
from am.train.data import Labelled, synthetic_images
from am.train.loop import TrainConfig, resume_problem
from am.train.runfiles import state_path
from tests.model.test_train_resume import _interrupt_at, _run

TINY = {"encoder": "tu-mobilenetv3_small_100", "encoder_depth": 5, "decoder_channels": (32, 16, 8, 8, 4)}
BASE = dict(**TINY, steps_per_epoch=1, batch_size=2, crop=64, warmup_steps=1, threads=1)
TINY_CLI = ["--synthetic", "2", "--synthetic-size", "64", "--synthetic-valid", "1", "--encoder", TINY["encoder"],
            "--decoder-channels", "32,16,8,8,4", "--steps-per-epoch", "1", "--batch-size", "1", "--crop", "64",
            "--threads", "1", "--tile-size", "256", "--warmup-steps", "1"]


@pytest.fixture(scope="module")
def images() -> list[Labelled]:
    return synthetic_images(count=4, size=128, seed=11)


@pytest.fixture
def first_epoch_best(monkeypatch: pytest.MonkeyPatch):
    """Validation that scores every epoch after the first lower, as a run that peaked early: later
    epochs save no checkpoint."""
    real = loop.validate
    calls = []

    def declining(predictor, items, *, tile_size=512):
        metrics, per_image = real(predictor, items, tile_size=tile_size)
        calls.append(1)
        score = 0.9 if len(calls) == 1 else 0.1
        return {**metrics, "dice": score, "f1": score}, per_image

    monkeypatch.setattr(loop, "validate", declining)
    return calls


def _resumed(config: TrainConfig, **changes) -> TrainConfig:
    return TrainConfig(**{**config.__dict__, "resume": True, **changes})


def test_a_resume_writes_a_missing_or_replaced_best_checkpoint_again_from_its_state(
        tmp_path: Path, images: list[Labelled], caplog: pytest.LogCaptureFixture, first_epoch_best) -> None:
    out = tmp_path / "m.pt"
    config = TrainConfig(out=out, **BASE, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        _run(config, images, progress=_interrupt_at(2))
    best = out.read_bytes()
    out.unlink()  # moved away between the runs
    with caplog.at_level(logging.WARNING, logger="am.train.loop"), pytest.raises(KeyboardInterrupt):
        _run(_resumed(config), images, progress=_interrupt_at(2))
    assert out.read_bytes() == best and "m.pt is missing: wrote it again" in caplog.text
    out.write_bytes(b"not a checkpoint")  # replaced
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="am.train.loop"), pytest.raises(KeyboardInterrupt):
        _run(_resumed(config), images, progress=_interrupt_at(2))
    assert out.read_bytes() == best and "cannot be read" in caplog.text
    # The reviewer's case: the resumed epochs all score lower, so they save nothing; the best is there.
    out.unlink()
    result = _run(_resumed(config), images)
    assert result.best_epoch == 1 and result.epochs_run == 2
    assert out.read_bytes() == best and load_checkpoint(out)[0].validation["epoch"] == 1


def test_a_checkpoint_removed_during_a_run_is_written_again_at_its_end(
        tmp_path: Path, images: list[Labelled], caplog: pytest.LogCaptureFixture, first_epoch_best) -> None:
    out = tmp_path / "m.pt"

    def remove_at_epoch_2(iterable, total, desc):
        if desc.startswith("epoch 2/"):
            out.unlink()
        return iterable

    with caplog.at_level(logging.WARNING, logger="am.train.loop"):
        result = _run(TrainConfig(out=out, **BASE, epochs=2), images, progress=remove_at_epoch_2)
    assert result.best_epoch == 1 and load_checkpoint(out)[0].validation["epoch"] == 1
    assert "m.pt is missing: wrote it again" in caplog.text


def test_a_state_without_a_copy_refuses_a_resume_whose_checkpoint_is_gone(
        tmp_path: Path, images: list[Labelled], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.pt"
    config = TrainConfig(out=out, **BASE, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        _run(config, images, progress=_interrupt_at(2))
    # A state written before states kept a copy of the best epoch.
    state = torch.load(state_path(out), map_location="cpu", weights_only=True)
    del state[loop.BEST_COPY]
    torch.save(state, state_path(out))
    assert resume_problem(out) is None  # the checkpoint is there: the run can go on
    kept = tmp_path / "kept.pt"
    out.rename(kept)
    words = r"m\.pt is missing.*keeps no copy.*put the checkpoint of epoch 1 back at .*m\.pt.*drop --resume"
    with pytest.raises(CheckpointError, match=words):
        _run(_resumed(config), images)
    # The command refuses before it reads or renders any image.
    monkeypatch.setattr(train_cli, "synthetic_images", lambda **kwargs: pytest.fail("data was read"))
    with pytest.raises(SystemExit) as stopped:
        train_cli.main([*TINY_CLI, "--epochs", "3", "--out", str(out), "--resume"])
    assert stopped.value.code == 2 and "keeps no copy" in capsys.readouterr().err
    # With the checkpoint put back the run goes on.
    kept.rename(out)
    assert resume_problem(out) is None
    assert [h["epoch"] for h in _run(_resumed(config), images).history] == [1, 2, 3]


def test_a_finished_run_whose_checkpoint_is_gone_is_not_reported_as_there(
        tmp_path: Path, images: list[Labelled]) -> None:
    out = tmp_path / "m.pt"
    config = TrainConfig(out=out, **BASE, epochs=1)
    _run(config, images)
    assert resume_problem(out) is None
    out.unlink()
    assert "finished run, but" in resume_problem(out) and "is missing" in resume_problem(out)
    with pytest.raises(CheckpointError, match=r"m\.pt is the checkpoint of a finished run, but .*m\.pt is missing"):
        _run(_resumed(config), images)


def test_the_command_says_which_checkpoint_holds_a_best_epoch_from_before_the_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture, first_epoch_best) -> None:
    out = tmp_path / "m.pt"
    assert train_cli.main([*TINY_CLI, "--epochs", "1", "--keep-state", "--out", str(out)]) == 0
    assert f"wrote {out} and" in capsys.readouterr().out
    best = out.read_bytes()
    out.unlink()
    assert train_cli.main([*TINY_CLI, "--epochs", "3", "--keep-state", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "best epoch 1:" in printed and f"{out} holds it (saved before this resume)" in printed
    assert f"wrote {out}" not in printed and out.read_bytes() == best


def test_a_resume_names_a_data_folder_however_it_is_spelled(
        tmp_path: Path, images: list[Labelled], monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "tiles"
    data.mkdir()
    monkeypatch.chdir(tmp_path)
    assert train_cli.data_folders([Path("tiles")]) == [str(data.resolve())]
    out = tmp_path / "m.pt"
    summary = {"folders": ["tiles"], "train_images": 3}  # as states recorded folders before: as typed
    config = TrainConfig(out=out, **BASE, epochs=2, data_summary=summary)
    with pytest.raises(KeyboardInterrupt):
        _run(config, images, progress=_interrupt_at(2))
    absolute = {**summary, "folders": train_cli.data_folders([data])}
    resumed = _run(_resumed(config, data_summary=absolute, keep_state=True), images)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(CheckpointError) as refused:
        _run(_resumed(config, epochs=3, data_summary={**summary, "folders": [str(other)]}), images)
    message = str(refused.value)
    # Only what differs, not the whole data summary.
    assert f"data.folders ['{data.resolve()}'] -> ['{other}']" in message
    assert "train_images" not in message and len(message) < 400


def test_the_command_that_resumes_works_from_another_directory(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Both spellings of an option, and an abbreviation argparse accepts; other values stay as given.
    argv = ["--data", "tiles", "--ou", "runs/m.pt", "--init=base.pt", "--epochs", "2", "--encoder", "tiles"]
    command = train_cli.resume_command(argv, resuming=False)
    here = os.path.abspath(".")
    assert command == (f"python -m am.train --data {here}/tiles --ou {here}/runs/m.pt --init={here}/base.pt "
                       "--epochs 2 --encoder tiles --resume")
