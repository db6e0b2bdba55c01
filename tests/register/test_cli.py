"""python -m am.register on a dataset folder, through a real subprocess, and register_group."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from am.errors import InputError, RegistrationError
from am.register import register_group
from am.register.testing import draw_lattice_mask
from am.synth.lattice import Lattice

REPO = Path(__file__).resolve().parents[2]


def make_dataset(root: Path, group: str = "g", *, rows: int = 5, cols: int = 6) -> Path:
    lattice = Lattice.centred(rows=rows, cols=cols, width=260, height=220, pitch_x=32, angle_deg=4)
    drawn = draw_lattice_mask(lattice, width=260, height=220, radius=8, missing=[2])
    (root / "tiles_stitched" / group).mkdir(parents=True)
    (root / "source_norm" / group).mkdir(parents=True)
    tifffile.imwrite(root / "tiles_stitched" / group / "mask.tiff", drawn.mask)
    tifffile.imwrite(root / "source_norm" / group / "source.tiff", np.where(drawn.mask > 0, 200, 40).astype(np.uint8))
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "am.register", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def test_cli_registers_a_group(tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    result = run_cli(str(dataset), "--rows", "5", "--cols", "6")
    assert result.returncode == 0, result.stderr
    assert "g: 29 marks numbered on a 5 x 6 grid (given)" in result.stdout
    out = dataset / "am_coords" / "g"
    assert {p.name for p in out.iterdir()} == {
        "am_coordinates.png", "am_coordinates.csv", "overlay.png", "registration.json",
    }
    data = json.loads((out / "registration.json").read_text())
    assert data["empty_node_ids"] == [2]


def test_cli_estimates_the_shape_and_says_so(tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    result = run_cli(str(dataset), "g")
    assert result.returncode == 0, result.stderr
    assert "5 x 6 grid (estimated)" in result.stdout
    assert "estimated a 5 x 6 grid" in result.stderr


def test_cli_missing_inputs_exit_1_and_name_the_file(tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    (dataset / "source_norm" / "g" / "source.tiff").unlink()
    result = run_cli(str(dataset), "g", "--rows", "5", "--cols", "6")
    assert result.returncode == 1
    assert "source_norm/g/source.tiff" in result.stderr
    assert "python -m am.pipeline" in result.stderr
    assert "Traceback" not in result.stderr
    # A file given as the dataset exists: it is the wrong kind of thing, not missing.
    given = dataset / "source_norm" / "g" / "source.txt"
    given.write_text("x")
    result = run_cli(str(given), "--rows", "5", "--cols", "6")
    assert result.returncode == 1 and result.stderr.strip() == (
        f"error: dataset folder {given} is a file, not a folder: give the dataset folder")


def test_cli_impossible_grid_exit_1(tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    result = run_cli(str(dataset), "--rows", "3", "--cols", "6")
    assert result.returncode == 1
    assert "the grid was given 3 rows" in result.stderr
    assert not (dataset / "am_coords" / "g" / "registration.json").exists()


@pytest.mark.parametrize(("rows", "cols", "words"), [
    ("0", "6", "--rows must be a positive whole number of grid positions, got 0"),
    ("5", "-1", "--cols must be a positive whole number of grid positions, got -1"),
    ("300", "300", "a 300 x 300 grid has more than 65535 positions"),
    ("1", "3", "a 1 x 3 grid has 3 position(s), but registration fits the grid to at least 4 marks"),
])
def test_cli_impossible_shape_is_a_usage_error_that_keeps_earlier_outputs(tmp_path, rows, cols, words):
    dataset = make_dataset(tmp_path / "ds")
    assert run_cli(str(dataset), "--rows", "5", "--cols", "6").returncode == 0
    earlier = (dataset / "am_coords" / "g" / "registration.json").read_text()
    result = run_cli(str(dataset), "--rows", rows, "--cols", cols)
    assert result.returncode == 2
    assert words in result.stderr and "usage:" in result.stderr
    assert (dataset / "am_coords" / "g" / "registration.json").read_text() == earlier


def test_register_group_refuses_an_impossible_shape_before_removing_outputs(tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    register_group(dataset, "g", rows=5, cols=6)
    with pytest.raises(InputError, match="rows must be a positive whole number"):
        register_group(dataset, "g", rows=0, cols=6)
    assert (dataset / "am_coords" / "g" / "registration.json").exists()


def test_cli_groups_may_follow_the_options(tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    for group in ("g", "g/"):  # as typed, and as a shell completes it
        result = run_cli(str(dataset), "--rows", "5", "--cols", "6", group)
        assert result.returncode == 0, result.stderr
    assert (dataset / "am_coords" / "g" / "registration.json").exists()


@pytest.mark.parametrize("args", [["--rows", "5"], ["--rows", "five", "--cols", "6"], ["g/../h"]])
def test_cli_usage_errors_exit_2(tmp_path, args):
    dataset = make_dataset(tmp_path / "ds")
    result = run_cli(str(dataset), *args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_cli_help_explains_the_outputs():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "am_coordinates.csv" in result.stdout and "--rows" in result.stdout


def test_register_group_missing_mask_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"tiles_stitched/g/mask.tiff does not exist: run python -m am.pipeline"):
        register_group(tmp_path, "g", rows=5, cols=6)


def test_register_group_writes_am_coords(tmp_path):
    dataset = make_dataset(tmp_path / "ds", "g1")
    reg = register_group(dataset, "g1", rows=5, cols=6)
    assert reg.assigned == 29
    assert (dataset / "am_coords" / "g1" / "am_coordinates.png").is_file()


def test_earlier_output_left_mid_delete_does_not_block_the_next_registration(tmp_path):
    # A run stopped while deleting the previous output leaves it beside the staging folder.
    dataset = make_dataset(tmp_path / "ds", "g1")
    register_group(dataset, "g1", rows=5, cols=6)
    stale = dataset / "am_coords" / ".g1.partial.old"
    stale.mkdir()
    (stale / "am_coordinates.csv").write_text("an earlier run's table")
    reg = register_group(dataset, "g1", rows=5, cols=6)
    assert reg.assigned == 29 and not stale.exists()
    assert sorted(p.name for p in (dataset / "am_coords").iterdir()) == ["g1"]


def test_an_output_folder_linked_to_another_disk_is_replaced_there_and_stays_linked(tmp_path):
    dataset = make_dataset(tmp_path / "ds", "g1")
    elsewhere = tmp_path / "other-disk" / "g1-ids"
    elsewhere.mkdir(parents=True)
    (elsewhere / "am_coordinates.csv").write_text("an earlier run's table")
    (dataset / "am_coords").mkdir()
    (dataset / "am_coords" / "g1").symlink_to(elsewhere, target_is_directory=True)
    link = dataset / "am_coords" / "g1"
    for _ in range(2):  # the second run replaces the first one's outputs through the link again
        assert register_group(dataset, "g1", rows=5, cols=6).assigned == 29
        assert link.is_symlink() and link.resolve() == elsewhere.resolve()
        assert (elsewhere / "am_coordinates.csv").read_text().startswith("id,row,col")
    assert sorted(p.name for p in elsewhere.parent.iterdir()) == ["g1-ids"]
    # A failed registration removes the earlier ids where they are, and keeps the link for the next.
    with pytest.raises(RegistrationError):
        register_group(dataset, "g1", rows=30, cols=30)
    assert link.is_symlink() and elsewhere.is_dir() and not any(elsewhere.iterdir())
    assert register_group(dataset, "g1", rows=5, cols=6).assigned == 29
    assert link.is_symlink() and (elsewhere / "am_coordinates.csv").is_file()


def test_a_failed_run_leaves_no_ids_of_an_earlier_one(tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    assert run_cli(str(dataset), "--rows", "5", "--cols", "6").returncode == 0
    out = dataset / "am_coords" / "g"
    assert (out / "am_coordinates.csv").is_file()
    result = run_cli(str(dataset), "--rows", "30", "--cols", "30")
    assert result.returncode == 1 and "group g:" in result.stderr
    assert not out.exists()


def test_each_warning_logged_names_its_group(tmp_path, caplog):
    # With several groups, or with the INFO lines hidden, a warning must still say which mask to check.
    dataset = make_dataset(tmp_path / "ds", "slide_2")
    with caplog.at_level("WARNING", logger="am.register"):
        registration = register_group(dataset, "slide_2", rows=None, cols=None)
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert registration.warnings and logged == [f"group slide_2: {w}" for w in registration.warnings]


def test_an_interrupted_registration_keeps_the_ids_of_an_earlier_one_whole(tmp_path, monkeypatch):
    # They match their own registration.json; only a failed registration must not leave them.
    import am.register.dataset

    dataset = make_dataset(tmp_path / "ds")
    register_group(dataset, "g", rows=5, cols=6)
    out = dataset / "am_coords" / "g"
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(am.register.dataset, "register_mask", interrupted)
    with pytest.raises(KeyboardInterrupt):
        register_group(dataset, "g", rows=6, cols=5)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier
    assert sorted(p.name for p in out.parent.iterdir()) == ["g"], "no staging folder left behind"


@pytest.mark.parametrize("which", ["group folder", "am_coords"])
def test_a_read_only_output_folder_fails_its_group_keeps_its_ids_and_the_next_group_still_registers(tmp_path, which):
    from faults.harness import read_only

    dataset = make_dataset(tmp_path / "ds", "a")
    make_dataset(dataset, "b")
    assert run_cli(str(dataset), "--rows", "5", "--cols", "6").returncode == 0
    earlier = {p.name: p.read_bytes() for p in (dataset / "am_coords" / "a").iterdir()}
    (dataset / "am_coords" / "b" / "am_coordinates.csv").unlink()
    locked = dataset / "am_coords" / ("a" if which == "group folder" else "")
    with read_only(locked) as reason:
        result = run_cli(str(dataset), "--rows", "5", "--cols", "6")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: group a: cannot use {locked}" in result.stderr and reason in result.stderr, result.stderr
    assert {p.name: p.read_bytes() for p in (dataset / "am_coords" / "a").iterdir()} == earlier
    if which == "group folder":  # the other group still goes ahead
        assert "b: 29 marks numbered" in result.stdout
        assert (dataset / "am_coords" / "b" / "am_coordinates.csv").is_file()
        assert "error: 1 of 2 group(s) failed" in result.stderr
    else:
        assert "error: 2 of 2 group(s) failed" in result.stderr


def test_hidden_and_macos_folders_are_no_groups(tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    for name in (".ipynb_checkpoints", "__MACOSX", "g"):
        (dataset / "source" / name).mkdir(parents=True)
    result = run_cli(str(dataset), "--rows", "5", "--cols", "6")
    assert result.returncode == 0 and "g: 29 marks numbered" in result.stdout, result.stderr
    # An empty source/ falls back to the stitched masks' folders, as --help says.
    (dataset / "source" / "g").rmdir()
    result = run_cli(str(dataset), "--rows", "5", "--cols", "6")
    assert result.returncode == 0 and "g: 29 marks numbered" in result.stdout, result.stderr
