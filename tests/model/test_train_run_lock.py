"""Two am.train runs with one --out would overwrite each other's checkpoint, metrics and resume state:
the second is refused at once, naming the first, and the lock goes with the run that held it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import am.train.__main__ as train_cli
import am.train.runfiles as runfiles
from am.errors import InputError
from am.model.build import TEST_DECODER_CHANNELS, TEST_ENCODER
from am.train.runfiles import lock_path, run_lock

ARGS = ["--synthetic", "1", "--synthetic-valid", "1", "--synthetic-size", "64", "--epochs", "1",
        "--steps-per-epoch", "1", "--batch-size", "1", "--crop", "64", "--tile-size", "64", "--threads", "1",
        "--encoder", TEST_ENCODER, "--decoder-channels", ",".join(map(str, TEST_DECODER_CHANNELS)), "--device", "cpu"]


def test_a_second_run_with_the_same_out_is_refused_naming_the_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "runs" / "m.pt"
    monkeypatch.setattr(train_cli, "synthetic_images", lambda **kwargs: pytest.fail("images were rendered"))
    with run_lock(out):
        assert lock_path(out) == tmp_path / "runs" / "m.lock"
        assert train_cli.main(["--out", str(out), *ARGS]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"--out {out} is being written by another run (am.train, pid {os.getpid()} on" in err
    assert "give another --out" in err
    assert not out.exists() and not lock_path(out).exists()  # let go, and its file removed, with the block


def test_the_lock_is_let_go_when_its_holder_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from am.train.runfiles import run_lock\n"
                               f"with run_lock(Path({str(out)!r})):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=rf"another run \(am\.train, pid {holder.pid} on"), run_lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(out).exists()  # left by the killed run, and no obstacle
    with run_lock(out):
        assert f"pid {os.getpid()} on" in lock_path(out).read_text()


def test_a_lock_removed_by_its_ending_holder_is_taken_on_the_new_file(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.pt"
    checks = iter([False, True])  # the first file opened was removed before it was locked
    real = runfiles._names
    monkeypatch.setattr(runfiles, "_names", lambda path, descriptor: next(checks, None) or real(path, descriptor))
    with run_lock(out):
        assert lock_path(out).is_file()


def test_the_lock_is_never_taken_through_a_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep")
    lock_path(tmp_path / "m.pt").symlink_to(elsewhere)
    with pytest.raises(InputError, match="is a symbolic link"), run_lock(tmp_path / "m.pt"):
        pass
    assert elsewhere.read_text() == "keep"
