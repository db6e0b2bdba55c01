"""The GPU lease's preparation (benchmarks/gpu_prep.py): the wheels it asks pip for match the versions
the tests run with, wheels of other versions go, and the real samples arrive whole or not at all.
pip's download itself is not run here (it needs PyPI)."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pytest

from tests.scripts import load_script

gpu_prep = load_script(Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_prep.py")


def wheel_name(name: str, version: str) -> str:
    return f"{gpu_prep.normalise(name)}-{version}-py3-none-any.whl"


@pytest.fixture(autouse=True)
def repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tmp_path stands for the repository root: the prep takes only folders inside it (the device
    tool carries only repository paths)."""
    monkeypatch.setattr(gpu_prep, "REPO", tmp_path)


@pytest.fixture
def real_samples(tmp_path: Path) -> Path:
    """A folder with the real samples' file names (their contents do not matter to the prep)."""
    folder = tmp_path / "real"
    folder.mkdir()
    for name in gpu_prep.REAL_FILES:
        (folder / name).write_bytes(name.encode())
    return folder


@pytest.fixture
def wheels_ready(tmp_path: Path) -> Path:
    """A wheel folder already holding every wanted package at this Python's version."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name in gpu_prep.MISSING_ON_DEVICE:
        (folder / wheel_name(name, importlib.metadata.version(name))).write_bytes(b"wheel")
    return folder


def test_dry_run_asks_pip_for_this_pythons_versions_for_the_device_and_writes_nothing(tmp_path, real_samples,
                                                                                        capsys):
    wheels, copy = tmp_path / "w", tmp_path / "r"
    assert gpu_prep.main(["--dry-run", "--wheels", str(wheels), "--real-from", str(real_samples),
                          "--real-to", str(copy)]) == 0
    out = capsys.readouterr().out
    command = next(line for line in out.splitlines() if line.startswith("would run: "))
    for name in gpu_prep.MISSING_ON_DEVICE:
        assert f" {name}=={importlib.metadata.version(name)}" in command
    assert "--no-deps" in command and "--only-binary=:all:" in command
    assert "--python-version 3.12" in command and f"-d {wheels}" in command
    assert f"would copy the real samples from {real_samples} to {copy}" in out
    assert not wheels.exists() and not copy.exists()


def test_only_wanted_packages_at_other_versions_are_stale(tmp_path):
    versions = {"segmentation-models-pytorch": "0.6.0", "boto3": "1.44.8"}
    for name in (wheel_name("segmentation-models-pytorch", "0.6.0"), wheel_name("boto3", "1.40.0"),
                 wheel_name("boto3", "1.44.8"), wheel_name("numpy", "1.0.0")):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in gpu_prep.stale_wheels(tmp_path, versions)] == [wheel_name("boto3", "1.40.0")]
    assert gpu_prep.present_wheels(tmp_path, versions) == {"segmentation-models-pytorch", "boto3"}
    assert gpu_prep.present_wheels(tmp_path, {**versions, "tenacity": "9.2.1"}) == set(versions)


def test_prep_removes_other_versions_copies_the_real_samples_and_prints_the_device_call(
        tmp_path, real_samples, wheels_ready, capsys):
    stale = wheels_ready / wheel_name("boto3", "0.0.1")
    stale.write_bytes(b"old")
    copy = tmp_path / ".real"
    copy.mkdir()
    (copy / "left-over.png").write_bytes(b"from an earlier prep")
    assert gpu_prep.main(["--wheels", str(wheels_ready), "--real-from", str(real_samples),
                          "--real-to", str(copy)]) == 0
    out = capsys.readouterr().out
    assert not stale.exists() and "removed boto3-0.0.1" in out
    assert sorted(p.name for p in copy.iterdir()) == sorted(gpu_prep.REAL_FILES)
    assert (copy / "crop2_image.png").read_bytes() == b"crop2_image.png"
    assert "REAL=.real" in out and "carry=['wheels', '.real']" in out and "timeout_s=590" in out
    assert "WHEELS=wheels" in out


def test_the_device_call_packs_its_results_into_the_returned_folder_and_ends_inside_its_timeout():
    call = gpu_prep.device_call(wheels=".whl", real=".real")
    command = call.split('command="', 1)[1].split('"', 1)[0]
    # The checkpoints and resume states stay in a folder of the device's own; $OUT, which comes back,
    # gets the packed results.
    assert "OUT=/tmp/gpu-run RESULTS=$OUT " in command and "OUT=$OUT" not in command.replace("RESULTS=$OUT", "")
    assert "DEADLINE_S=570 " in command and "BENCH_TIMEOUT_S=200 " in command and "MINUTES=4 " in command
    assert command.endswith("bash benchmarks/gpu_train.sh") and "WHEELS" not in command
    assert call.endswith("carry=['.whl', '.real'], timeout_s=590)")
    assert gpu_prep.DEADLINE_S < gpu_prep.CALL_TIMEOUT_S
    assert len(command) < gpu_prep.COMMAND_LIMIT_CHARS and len(call) < gpu_prep.COMMAND_LIMIT_CHARS


def test_a_device_call_over_the_tools_length_is_refused():
    with pytest.raises(gpu_prep.PrepError, match="over the 2000"):
        gpu_prep.device_call(wheels="w" * 2000, real=None)


def test_skip_real_leaves_the_samples_out_of_the_call(tmp_path, wheels_ready, capsys):
    copy = tmp_path / ".real"
    assert gpu_prep.main(["--wheels", str(wheels_ready), "--skip-real", "--real-from", str(tmp_path / "none"),
                          "--real-to", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "SKIP_REAL=1" in out and "carry=['wheels']" in out and not copy.exists()


def test_a_missing_real_folder_stops_before_anything_is_written(tmp_path, capsys):
    wheels = tmp_path / "w"
    assert gpu_prep.main(["--wheels", str(wheels), "--real-from", str(tmp_path / "nowhere"),
                          "--real-to", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"real samples not found at {tmp_path / 'nowhere'}" in err and "--skip-real" in err
    assert not wheels.exists() and not (tmp_path / "r").exists()


def test_a_folder_without_the_samples_is_refused_by_name(tmp_path, real_samples, capsys):
    (real_samples / "tile_b_512.png").unlink()
    assert gpu_prep.main(["--wheels", str(tmp_path / "w"), "--real-from", str(real_samples),
                          "--real-to", str(tmp_path / "r")]) == 2
    assert "lacks tile_b_512.png" in capsys.readouterr().err


def test_an_interrupted_copy_keeps_the_earlier_copy_whole(tmp_path, real_samples, monkeypatch):
    copy = tmp_path / ".real"
    gpu_prep.copy_real(real_samples, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    (real_samples / "crop1_image.png").write_bytes(b"newer")
    calls = []

    def failing_copy(source, target):
        calls.append(source)
        if len(calls) == 3:
            raise OSError("disk full")
        return shutil.copyfile(source, target)

    monkeypatch.setattr(gpu_prep.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        gpu_prep.copy_real(real_samples, copy)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".real", "real"], "a staging folder was left behind"


def test_a_package_missing_here_is_named_with_the_fix(monkeypatch, tmp_path, real_samples, capsys):
    monkeypatch.setattr(gpu_prep, "MISSING_ON_DEVICE", ("no-such-package-am-segm",))
    assert gpu_prep.main(["--dry-run", "--real-from", str(real_samples)]) == 2
    err = capsys.readouterr().err
    assert "no-such-package-am-segm not installed" in err and "make gpu-prep" in err
