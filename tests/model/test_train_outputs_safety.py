"""What am.train writes never replaces what it should not: a new run does not overwrite an earlier
run's checkpoint, metrics or resume state; --out never lies inside the training data; a full disk
while saving is one line naming the file (the earlier checkpoint and state intact); and a resume
state that cannot be read is said to be empty, foreign or damaged, in one line."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import torch

import am.train.__main__ as train_cli
from am.errors import CheckpointError
from am.imageio import write_png
from am.model.build import TEST_DECODER_CHANNELS, TEST_ENCODER, build_model, write_untrained_checkpoint
from am.model.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from am.train.data import synthetic_images
from am.train.runfiles import (
    load_state,
    lock_path,
    metrics_path,
    record_path,
    run_lock,
    run_outputs,
    state_path,
)
from tests.model.training_state import state_saver

TINY = ["--encoder", TEST_ENCODER, "--decoder-channels", ",".join(map(str, TEST_DECODER_CHANNELS))]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest --data root: two training images and one validation image of 128 px."""
    root = tmp_path_factory.mktemp("data")
    images = synthetic_images(count=3, size=128, seed=11)
    for split, chosen in (("train", images[:2]), ("valid", images[2:])):
        for i, item in enumerate(chosen):
            write_png(root / split / "synthetic" / "seed3" / "source" / f"{i:04d}.png", item.image)
            write_png(root / split / "synthetic" / "seed3" / "mask" / f"{i:04d}.png", item.mask * 255)
    return root


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--steps-per-epoch", "1", "--batch-size", "2", "--crop", "64", "--threads", "1",
            "--epochs", "1", *TINY, "--out", str(out), *extra]


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command reads or renders training images."""
    monkeypatch.setattr(train_cli, "synthetic_images", lambda **kwargs: pytest.fail("images were rendered"))
    monkeypatch.setattr(train_cli, "read_pairs", lambda *args, **kwargs: pytest.fail("images were read"))


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if " ERROR " in line]


# --- 1. A new run never replaces an earlier run's files -----------------------------------------------------


def test_a_new_run_is_refused_where_a_finished_run_is_and_leaves_it_as_it_was(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m1.pt"
    assert train_cli.main(_args(data, out)) == 0
    finished = _contents(tmp_path)
    assert set(finished) == {"m1.pt", "m1.metrics.csv", "m1.metrics.json"}
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(train_cli, "synthetic_images", lambda **kwargs: pytest.fail("images were rendered"))
        patch.setattr(train_cli, "read_pairs", lambda *args, **kwargs: pytest.fail("images were read"))
        assert train_cli.main(_args(data, out, "--seed", "5")) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1
    assert (f"--out {out}: {out}, {metrics_path(out)}, {record_path(out)} already exist, and a new run would replace "
            "them at its first epoch; that earlier run finished its 1 epoch: to train on from its weights, give "
            f"--init {out} and another --out; to start afresh, give another --out, or move or delete them first"
            ) in errors[0]
    assert _contents(tmp_path) == finished and not lock_path(out).exists()
    # The Makefile's way on for a run it finds finished: --resume says so and trains nothing.
    assert train_cli.main(_args(data, out, "--resume")) == 0
    assert "nothing to train" in capsys.readouterr().out and _contents(tmp_path) == finished


def test_what_a_new_run_is_told_depends_on_what_is_there(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    assert train_cli.earlier_run_problem(out) is None  # nothing there: the run goes ahead
    write_untrained_checkpoint(out, encoder=TEST_ENCODER, decoder_channels=TEST_DECODER_CHANNELS)
    alone = train_cli.earlier_run_problem(out)  # a checkpoint no am.train run recorded, e.g. a model put there
    assert alone == (f"--out {out}: {out} already exists, and a new run would replace it at its first epoch; to "
                     "start afresh, give another --out, or move or delete it first")
    state_path(out).write_bytes(b"a stopped run's state")
    stopped = train_cli.earlier_run_problem(out)
    assert stopped is not None and "to continue that earlier run, add --resume" in stopped
    out.unlink()
    only_state = train_cli.earlier_run_problem(out)  # its copy of the best epoch would go too
    assert only_state is not None and f"{state_path(out)} already exists" in only_state
    # benchmarks/gpu_train.sh moves these to OUT/previous/ before each run: nothing is left to refuse.
    for path in run_outputs(out):
        if path.exists():
            path.rename(tmp_path / f"previous-{path.name}")
    assert train_cli.earlier_run_problem(out) is None


def test_the_run_lock_is_told_before_the_files_of_a_run_writing_them_now(
        tmp_path: Path, data: Path, capsys: pytest.CaptureFixture, no_data) -> None:
    out = tmp_path / "m.pt"
    out.write_bytes(b"epoch 1 of a run that is still going")
    with run_lock(out):
        assert train_cli.main(_args(data, out)) == 1
    assert "is being written by another run" in capsys.readouterr().err


# --- 2. --out never lies inside the training data -----------------------------------------------------------


@pytest.mark.parametrize("where", ["train/synthetic/seed3/source/0000.png", "m.pt", "valid/../train/new/m.pt"])
def test_an_out_inside_a_data_root_is_refused_before_anything_is_written(
        tmp_path: Path, data: Path, where: str, capsys: pytest.CaptureFixture, no_data) -> None:
    before = _contents(data)
    out = data / where
    with pytest.raises(SystemExit) as stopped:
        train_cli.main(_args(data, out))
    assert stopped.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"--out {out} lies inside --data {data}, where it could overwrite a training file and would put the "
            "run's files among the data; give an --out outside the --data folders") in err
    assert _contents(data) == before


def test_a_data_root_reached_through_a_link_or_beside_the_checkpoint_is_found(tmp_path: Path, data: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(data, target_is_directory=True)
    assert "lies inside --data" in train_cli.inside_data_problem(link / "m.pt", [data])
    assert "lies inside --data" in train_cli.inside_data_problem(data / "m.pt", [tmp_path / "elsewhere", link])
    # A folder named as the resume state would be: the run would write into it.
    assert train_cli.inside_data_problem(tmp_path / "m.pt", [tmp_path / "m.resume"]) == (
        f"--out {tmp_path / 'm.pt'} would write {tmp_path / 'm.resume'}, which lies inside --data "
        f"{tmp_path / 'm.resume'}, where it could overwrite a training file and would put the run's files among the "
        "data; give an --out outside the --data folders")
    assert train_cli.inside_data_problem(tmp_path / "m.pt", [data]) is None  # beside the data is fine
    assert train_cli.inside_data_problem(data.parent / f"{data.name}-model.pt", [data]) is None


# --- 3. A full disk while saving: one line naming the file, the earlier files intact ---------------------------


class _FullDisk:
    """A file whose writes fail once ``room`` bytes are written, as on a disk that filled up."""

    def __init__(self, handle: Any, room: int) -> None:
        self._handle, self._room = handle, room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _disk_fills_at(monkeypatch: pytest.MonkeyPatch, call: int, room: int = 1000) -> list[int]:
    """Make the ``call``-th torch.save from now on (1 = the next) meet a full disk; the calls seen so far."""
    real = torch.save
    calls = [0]

    def save(payload: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        real(payload, _FullDisk(handle, room) if calls[0] == call else handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return calls


def _tiny_model() -> tuple[torch.nn.Module, ModelMeta]:
    meta = ModelMeta(encoder=TEST_ENCODER, decoder_channels=TEST_DECODER_CHANNELS)
    return build_model(meta), meta


def test_torch_turns_a_full_disk_into_a_runtime_error(tmp_path: Path) -> None:
    """What the save sites undo: torch's RuntimeError, raised while handling the disk's OSError."""
    with (tmp_path / "x.pt").open("wb") as handle, pytest.raises(RuntimeError) as raised:
        torch.save({"weights": torch.zeros(10_000)}, _FullDisk(handle, 1000))
    assert isinstance(raised.value.__context__, OSError) and raised.value.__context__.errno == errno.ENOSPC


@pytest.mark.parametrize("room", [0, 1000])  # the first write fails, or one in the middle of the file
def test_a_checkpoint_saved_on_a_full_disk_is_an_oserror_naming_it_and_the_earlier_one_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    model, meta = _tiny_model()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, meta)
    earlier = path.read_bytes()
    _disk_fills_at(monkeypatch, 1, room)
    with pytest.raises(OSError) as raised:
        save_checkpoint(path, model, meta)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"] and path.read_bytes() == earlier


@pytest.mark.parametrize("room", [0, 3000])  # torch raises the OSError itself, or its RuntimeError
def test_a_resume_state_saved_on_a_full_disk_is_an_oserror_naming_it_and_the_earlier_one_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    path = tmp_path / "m.resume"
    save = state_saver(path, torch.nn.Linear(200, 100))
    save(0)
    earlier = path.read_bytes()
    _disk_fills_at(monkeypatch, 1, room)
    with pytest.raises(OSError) as raised:
        save(1)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["m.resume"] and path.read_bytes() == earlier


def test_am_train_on_a_full_disk_says_so_in_one_line_and_keeps_the_earlier_epoch(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.pt"
    # Epoch 1 saves the checkpoint and the state; the third save is epoch 2's checkpoint (where it scores
    # better) or its state: either way the disk is full before epoch 2 replaced anything.
    calls = _disk_fills_at(monkeypatch, 3)
    assert train_cli.main(_args(data, out, "--epochs", "2")) == 1
    assert calls[0] == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError" not in err and "unexpected pos" not in err
    errors = _error_lines(err)
    assert len(errors) == 1, err
    failed = next(path for path in (out, state_path(out)) if f"cannot use {path}: " in errors[0])
    assert errors[0].endswith(f"cannot use {failed}: No space left on device (ENOSPC); free space on the disk holding "
                              f"{failed} (or work on another disk), then rerun the same command")
    assert load_checkpoint(out)[0].validation["epoch"] == 1
    assert load_state(state_path(out))["epoch"] == 0  # --resume goes on from epoch 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- 4. A resume state that cannot be read: what it is, in one line --------------------------------------------


class _Foreign:
    """An object safe loading refuses (any class not on torch's list)."""


def _state_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Unreadable resume states, each with the cause its message must give."""
    folder = tmp_path / "states"
    folder.mkdir()
    model, meta = _tiny_model()
    files: dict[str, tuple[Path, str]] = {}
    empty = folder / "empty.resume"
    empty.write_bytes(b"")
    files["empty"] = (empty, "is empty")
    garbage = folder / "garbage.resume"
    garbage.write_bytes(b"garbage\n")
    files["garbage"] = (garbage, "is not a resume state of am.train (it starts b'garb')")
    checkpoint = folder / "checkpoint.resume"
    save_checkpoint(checkpoint, model, meta)
    files["checkpoint"] = (checkpoint, "is not a resume state of am.train (another torch file)")
    foreign = folder / "foreign.resume"
    torch.save({"format": "am-segm-train-state", "object": _Foreign()}, foreign)
    files["foreign"] = (foreign, "is not a resume state of am.train (it holds objects safe loading refuses)")
    truncated = folder / "truncated.resume"
    truncated.write_bytes(checkpoint.read_bytes()[:3000])
    files["truncated"] = (truncated, "is truncated or damaged")
    return files


def test_an_unreadable_resume_state_is_described_in_one_line(tmp_path: Path) -> None:
    for name, (path, cause) in _state_files(tmp_path).items():
        with pytest.raises(CheckpointError) as raised:
            load_state(path)
        message = str(raised.value)
        assert message == (f"--resume: {path} {cause}, so the run cannot be continued from it: to start afresh, "
                           "drop --resume and move or delete it and the run's other files beside it (checkpoint, "
                           "metrics), or give another --out"), name
        assert "weights_only" not in message and "\n" not in message, name


def test_am_train_resume_of_a_garbage_state_says_what_it_is(
        tmp_path: Path, data: Path, capsys: pytest.CaptureFixture, no_data) -> None:
    out = tmp_path / "m5.pt"
    state_path(out).write_bytes(b"garbage\n")
    assert train_cli.main(_args(data, out, "--resume")) == 1
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].endswith(
        f"--resume: {state_path(out)} is not a resume state of am.train (it starts b'garb'), so the run cannot be "
        "continued from it: to start afresh, drop --resume and move or delete it and the run's other files beside it "
        "(checkpoint, metrics), or give another --out")


def test_a_run_stopped_while_saving_its_first_epoch_says_what_to_move_before_a_rerun(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A rerun refuses an --out holding the files the stopped run had begun to write, so the message names them."""
    out = tmp_path / "m.pt"
    argv = ["--synthetic", "2", "--synthetic-valid", "1", "--out", str(out)]
    args = train_cli.parser().parse_args(argv)

    def stopped_between_the_log_and_the_state(*_: object) -> int:
        metrics_path(out).write_text("epoch\n1\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "_train", stopped_between_the_log_and_the_state)
    assert train_cli._train_until_interrupted(args, argv) == 130
    assert (f"interrupted while the first epoch was being saved, so there is nothing of this run to resume; move or "
            f"delete what it had written ({metrics_path(out)}), then rerun the same command to start again"
            ) in caplog.text


def test_a_resume_state_that_cannot_be_opened_says_why_in_one_line(tmp_path: Path) -> None:
    """Checked before the command's errors become exit codes, so an OSError is told as the command line tells one."""
    folder = tmp_path / "m.resume"
    folder.mkdir()
    with pytest.raises(CheckpointError) as raised:
        load_state(folder)
    assert str(raised.value) == (f"--resume: cannot use {folder}: Is a directory (EISDIR); a folder stands where a "
                                 "file is expected; move that folder aside and rerun the same command")
