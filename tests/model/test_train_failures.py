"""After am.train fails (a full disk, a diverged run), the way to go on that it names works.

A rerun of the same command is refused while --out holds this run's files, and a run that diverged
would diverge again if resumed: so a run none of whose epochs finished saving leaves no file behind,
one with finished epochs names its resume command, and one that diverged stops at once, before it
saves the diverged epoch, saying to start again with a lower rate.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import am.train.__main__ as train_cli
from am.train.runfiles import load_state, metrics_path, run_outputs, state_path
from tests.model.test_train_outputs_safety import _args, _disk_fills_at, _error_lines
from tests.model.test_train_outputs_safety import data as data  # the fixture


def test_a_run_whose_first_state_meets_a_full_disk_leaves_nothing_and_the_same_command_then_runs(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.pt"
    _disk_fills_at(monkeypatch, 2)  # epoch 1's checkpoint is saved, its resume state is not
    assert train_cli.main(_args(data, out)) == 1
    err = capsys.readouterr().err
    assert f"removed what it had written ({out}, {metrics_path(out)}" in err
    assert [path for path in run_outputs(out) if path.exists()] == []

    monkeypatch.undo()
    assert train_cli.main(_args(data, out)) == 0  # the same command, once the disk has room


def test_a_run_that_fails_after_finished_epochs_names_its_resume_command(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.pt"
    _disk_fills_at(monkeypatch, 3)  # after epoch 1's checkpoint and state
    assert train_cli.main(_args(data, out, "--epochs", "2")) == 1
    err = capsys.readouterr().err
    assert f"the finished epochs are kept in {state_path(out)}; once the cause below is fixed, continue with: " in err
    assert "--resume" in err.split("continue with: ")[1].splitlines()[0]
    assert len(_error_lines(err)) == 1  # the failure itself, once

    monkeypatch.undo()
    assert train_cli.main(_args(data, out, "--epochs", "2", "--resume")) == 0
    assert len(metrics_path(out).read_text().splitlines()) == 1 + 2  # a header and both epochs


def test_a_diverged_run_stops_before_saving_the_diverged_epoch_and_says_to_lower_the_rate(
        tmp_path: Path, data: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.pt"
    # The first step at this rate leaves the weights huge but finite; the second makes them NaN.
    assert train_cli.main(_args(data, out, "--epochs", "3", "--lr", "1e30", "--warmup-steps", "0")) == 1
    err = capsys.readouterr().err
    [error] = _error_lines(err)
    assert "epoch 2: the training diverged (" in error and "holds inf or NaN after the epoch" in error
    assert error.endswith("start again with a lower --lr (or more --warmup-steps)")
    assert f"the best epoch before it diverged is kept in {out}; to start again, give another --out" in err
    assert "--resume" not in err  # resumed, it would take the same steps to the same end
    assert load_state(state_path(out))["epoch"] == 0  # epoch 2 was not saved
    assert len(metrics_path(out).read_text().splitlines()) == 1 + 1


def test_a_run_that_diverges_in_its_first_epoch_leaves_nothing(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "m.pt"
    assert train_cli.main(_args(data, out, "--steps-per-epoch", "2", "--lr", "1e30", "--warmup-steps", "0")) == 1
    assert [path for path in run_outputs(out) if path.exists()] == []
    assert train_cli.main(_args(data, out)) == 0  # the same command with a sane rate


def test_a_resume_with_no_epoch_left_answers_before_any_image_is_read(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    finished, kept = tmp_path / "finished.pt", tmp_path / "kept.pt"
    assert train_cli.main(_args(data, finished)) == 0
    assert train_cli.main(_args(data, kept, "--keep-state")) == 0
    capsys.readouterr()
    monkeypatch.setattr(train_cli, "synthetic_images", lambda **kwargs: pytest.fail("images were rendered"))
    monkeypatch.setattr(train_cli, "read_pairs", lambda *args, **kwargs: pytest.fail("images were read"))

    for out in (finished, kept):  # its state deleted as it finished, or kept
        assert train_cli.main(_args(data, out, "--resume")) == 0
        assert f"nothing to train: {out} holds the finished run of 1 epochs" in capsys.readouterr().out
    assert train_cli.main(_args(data, finished, "--resume", "--epochs", "3")) == 1
    error = capsys.readouterr().err
    assert f"--resume: {finished} is a finished run of 1 epochs" in error
    assert "drop --resume and give another --out to start afresh" in error
