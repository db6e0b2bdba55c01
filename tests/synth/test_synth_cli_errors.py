"""am.synth refuses what it cannot make before drawing anything, and never leaves half a dataset.

Each test stands for a reproduced defect: a grid too large for 16-bit ids, ``--force`` deleting the
old dataset before the new one proved possible, ``tiles`` mixing two runs in one group folder, and
bad pitches ending in tracebacks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import am.synth.dataset as dataset
from am.dataset_lock import LOCK_NAME, dataset_lock
from am.errors import InputError
from am.imageio import read_image
from am.synth.__main__ import main as synth_main
from am.synth.dataset import MAX_MARKS, STAGING_NAME, write_dataset, write_tiles
from tests.log_handlers import handlers_during


def _files(root: Path) -> dict[str, bytes]:
    """The dataset's files, but the note of who holds its lock (empty once the draw has ended)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


def _no_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("rendering started before the options were checked")

    monkeypatch.setattr(dataset, "render", refuse)


def test_a_grid_beyond_16_bit_ids_is_refused_before_rendering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    _no_rendering(monkeypatch)
    with pytest.raises(InputError, match=rf"256 x 257 grid has 65792 marks.*at most {MAX_MARKS}"):
        write_dataset(tmp_path / "ds", rows=256, cols=257, pitch=6)
    assert not (tmp_path / "ds" / "source").exists()
    # The command line says the same in one line and exits 1, no traceback.
    assert synth_main(["dataset", str(tmp_path / "cli"), "--rows", "260", "--cols", "260", "--pitch", "8"]) == 1
    err = capsys.readouterr().err
    assert "260 x 260 grid" in err and str(MAX_MARKS) in err and "Traceback" not in err
    assert not (tmp_path / "cli" / "source").exists()
    # The limit itself is allowed (only the layout is checked here; drawing 65535 marks takes a while).
    style = dataset.demo_style(np.random.default_rng(0), pitch=2.0)
    lattice, _, _ = dataset.dataset_layout(rows=255, cols=257, seed=0, style=style)
    assert lattice.rows * lattice.cols == MAX_MARKS


def test_force_keeps_the_old_dataset_when_the_new_one_cannot_be_made(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root, rows=4, cols=4, seed=1)
    before = _files(root)
    assert len(before) == 4
    with pytest.raises(InputError, match="65535"):
        write_dataset(root, rows=1000, cols=1000, force=True)
    with pytest.raises(InputError, match="too large"):  # the image size, checked for every group up front
        write_dataset(root, rows=250, cols=250, pitch=100, groups=2, force=True)
    assert _files(root) == before


def test_a_run_that_fails_part_way_leaves_the_old_dataset_whole(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ds"
    write_dataset(root, rows=4, cols=4, seed=1)
    before = _files(root)
    real_render, calls = dataset.render, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("out of memory drawing group02")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(dataset, "render", fail_second)
    with pytest.raises(MemoryError):
        write_dataset(root, rows=5, cols=5, seed=2, groups=3, force=True)
    assert _files(root) == before and not (root / STAGING_NAME).exists()
    # A forced run that succeeds replaces every group and leaves no stale one.
    monkeypatch.setattr(dataset, "render", real_render)
    write_dataset(root, rows=3, cols=3, seed=5, groups=2, force=True)
    write_dataset(root, rows=3, cols=3, seed=5, groups=1, force=True)
    assert sorted(p.name for p in (root / "source").iterdir()) == ["group01"]
    assert sorted(p.name for p in (root / "truth").iterdir()) == ["group01"]
    assert not (root / STAGING_NAME).exists()
    assert tifffile.imread(root / "source" / "group01" / "image.tif").shape == read_image(
        root / "truth" / "group01" / "ids.png").shape


def test_a_truth_folder_alone_also_needs_force(tmp_path: Path) -> None:
    (tmp_path / "ds" / "truth" / "group07").mkdir(parents=True)
    with pytest.raises(InputError, match="--force"):
        write_dataset(tmp_path / "ds", rows=3, cols=3)


@pytest.mark.parametrize("pitch", ["0", "-5", "nan", "inf"])
def test_a_pitch_that_is_not_positive_is_a_usage_error(tmp_path: Path, pitch: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _no_rendering(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        synth_main(["dataset", str(tmp_path / "ds"), "--rows", "3", "--cols", "3", f"--pitch={pitch}"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        synth_main(["tiles", str(tmp_path / "tl"), "--count", "1", "--size", "32", f"--pitch-min={pitch}"])
    assert exit_.value.code == 2
    with pytest.raises(InputError, match="pitch"):
        write_dataset(tmp_path / "ds", rows=3, cols=3, pitch=float(pitch))
    assert not (tmp_path / "ds").exists() and not (tmp_path / "tl").exists()


def test_tiles_refuse_a_group_that_holds_tiles_and_force_replaces_it(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    folder = write_tiles(tmp_path, count=3, size=32, seed=1, group="g")
    before = _files(folder)
    with pytest.raises(InputError, match="--force"):
        write_tiles(tmp_path, count=2, size=64, seed=2, group="g")
    assert _files(folder) == before
    assert synth_main(["tiles", str(tmp_path), "--count", "2", "--size", "64", "--seed", "2", "--group", "g"]) == 1
    assert "--force" in capsys.readouterr().err and _files(folder) == before
    assert synth_main(["tiles", str(tmp_path), "--count", "2", "--size", "64", "--seed", "2", "--group", "g",
                       "--force"]) == 0
    for sub in ("source", "mask"):
        names = sorted(p.name for p in (folder / sub).iterdir())
        assert names == ["0000.png", "0001.png"], sub
        assert all(read_image(folder / sub / name).shape == (64, 64) for name in names)
    assert [p.name for p in tmp_path.iterdir()] == ["train"]  # no staging folder left behind
    # An empty group folder (made by hand, say) is not refused.
    (tmp_path / "valid" / "synthetic" / "h").mkdir(parents=True)
    write_tiles(tmp_path, count=1, size=32, split="valid", group="h")


def test_a_tiles_run_that_fails_part_way_changes_nothing(tmp_path: Path) -> None:
    folder = write_tiles(tmp_path, count=2, size=32, seed=1, group="g")
    before = _files(folder)

    def stop_after_one(samples):
        for index, sample in enumerate(samples):
            if index == 1:
                raise KeyboardInterrupt
            yield sample

    with pytest.raises(KeyboardInterrupt):
        write_tiles(tmp_path, count=3, size=64, seed=2, group="g", force=True, progress=stop_after_one)
    assert _files(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["train"]


def test_the_log_level_may_come_before_or_after_the_command() -> None:
    from am.synth.__main__ import _parser

    parser = _parser()
    dataset = ["dataset", "D", "--rows", "2", "--cols", "2"]
    assert parser.parse_args([*dataset, "--log-level", "warning"]).log_level == "WARNING"
    assert parser.parse_args(["--log-level", "error", *dataset]).log_level == "ERROR"
    assert parser.parse_args(dataset).log_level == "INFO"
    assert parser.parse_args(["tiles", "T", "--log-level", "DEBUG"]).log_level == "DEBUG"


def test_tiles_larger_than_any_synthetic_image_are_refused_before_rendering(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """65536 px a side asked numpy for tens of GB and ended in a MemoryError traceback."""
    with pytest.raises(SystemExit) as exit_:
        synth_main(["tiles", str(tmp_path / "tl"), "--count", "1", "--size", "65536"])
    assert exit_.value.code == 2 and "--size 65536 is above 4096" in capsys.readouterr().err
    with pytest.raises(InputError, match="size 65536 is above 4096"):
        write_tiles(tmp_path / "tl", count=1, size=65536)
    assert not (tmp_path / "tl").exists()


@pytest.mark.parametrize("pitch", ["3", "7.5"])
def test_a_pitch_too_small_for_its_marks_to_show_is_a_usage_error(tmp_path: Path, pitch: str,
                                                                  capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        synth_main(["dataset", str(tmp_path / "ds"), "--rows", "3", "--cols", "3", "--pitch", pitch])
    assert exit_.value.code == 2 and f"--pitch {pitch} px draws marks too small to show" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
    assert synth_main(["dataset", str(tmp_path / "ok"), "--rows", "3", "--cols", "3", "--pitch", "8"]) == 0
    assert read_image(tmp_path / "ok" / "truth" / "group01" / "ids.png").max() == 9


def test_tiles_under_a_file_fail_naming_it_before_rendering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    _no_rendering(monkeypatch)
    (tmp_path / "train").write_text("not a folder")
    assert synth_main(["tiles", str(tmp_path), "--count", "2", "--size", "32"]) == 1
    err = capsys.readouterr().err
    assert f"cannot use {tmp_path / 'train'}: Not a directory" in err and "synthetic" not in err, err
    assert (tmp_path / "train").read_text() == "not a folder"


@pytest.mark.parametrize("sub", ["truth", "source"])
def test_a_file_where_a_dataset_folder_goes_is_refused_and_kept(tmp_path: Path, sub: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    _no_rendering(monkeypatch)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / sub).write_text("someone's notes")
    assert synth_main(["dataset", str(tmp_path / "ds"), "--rows", "2", "--cols", "2", "--force"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ds' / sub} is a file, not a folder; move it aside and rerun" in err and "Traceback" not in err
    assert (tmp_path / "ds" / sub).read_text() == "someone's notes"
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [sub]


def test_the_pitch_help_says_what_each_style_draws() -> None:
    import inspect

    from am.synth.__main__ import _parser
    from am.synth.render import random_style

    parser = _parser()
    dataset_parser = parser._subparsers._group_actions[0].choices["dataset"]
    shown = " ".join(dataset_parser.format_help().split())
    low, high = dataset.DEMO_PITCH_RANGE
    random_low, random_high = inspect.signature(random_style).parameters["pitch_range"].default
    assert f"between {low:g} and {high:g} px with --style realistic, {random_low:g} and {random_high:g} px with " \
           "--style random" in shown


@pytest.mark.parametrize("pitch", ["1", "7.5"])
def test_tiles_refuse_a_smallest_pitch_too_small_for_marks_to_show(tmp_path: Path, pitch: str,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    _no_rendering(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        synth_main(["tiles", str(tmp_path / "tl"), "--count", "1", "--size", "32", "--pitch-min", pitch,
                    "--pitch-max", pitch])
    assert exit_.value.code == 2 and f"--pitch-min {pitch} px draws marks too small to show" in capsys.readouterr().err
    assert not (tmp_path / "tl").exists()


@pytest.mark.parametrize("group", ["", "  ", "a/b", "..", "a\\b"])
def test_tiles_refuse_a_group_that_is_no_plain_name(tmp_path: Path, group: str, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    _no_rendering(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        synth_main(["tiles", str(tmp_path / "tl"), "--count", "1", "--size", "32", "--group", group])
    assert exit_.value.code == 2 and f"--group {group!r} must be a plain folder name" in capsys.readouterr().err
    with pytest.raises(InputError, match="plain folder name"):
        write_tiles(tmp_path / "tl", count=1, size=32, group=group)
    assert not (tmp_path / "tl").exists()


def test_dataset_shows_a_progress_bar_with_log_lines_around_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    handlers = handlers_during(monkeypatch, dataset, "render")
    assert synth_main(["dataset", str(tmp_path / "ds"), "--rows", "2", "--cols", "2", "--groups", "2"]) == 0
    err = capsys.readouterr().err
    assert "dataset: 100%" in err and "2/2" in err and "drew group02" in err
    assert "_TqdmLoggingHandler" in handlers  # each group's log line is written through tqdm, not onto the bar
    handlers.clear()
    assert synth_main(["tiles", str(tmp_path / "tl"), "--count", "1", "--size", "32"]) == 0
    assert "_TqdmLoggingHandler" in handlers and "tiles: 100%" in capsys.readouterr().err


def test_force_waits_for_no_run_and_leaves_a_dataset_in_use_as_it_was(tmp_path: Path) -> None:
    """A forced draw over a dataset that a pipeline (here: its lock) is working on is refused, naming
    the run, and replaces nothing under it."""
    root = tmp_path / "ds"
    write_dataset(root, rows=3, cols=3, seed=1)
    before = (root / "source" / "group01" / "image.tif").read_bytes()
    with dataset_lock(root, command="am.pipeline"), \
            pytest.raises(InputError, match=r"is in use by another run \(am\.pipeline, pid "):
        write_dataset(root, rows=3, cols=3, seed=2, force=True)
    assert (root / "source" / "group01" / "image.tif").read_bytes() == before
    write_dataset(root, rows=3, cols=3, seed=2, force=True)  # once the run has ended
    assert (root / "source" / "group01" / "image.tif").read_bytes() != before


def test_tiles_without_a_mark_are_counted_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A pitch far over the tile's side leaves some tiles without a mark: they were written as empty
    # masks without a word, and a model trained on them learns to find nothing.
    with caplog.at_level("WARNING", logger="am.synth.dataset"):
        folder = write_tiles(tmp_path, count=12, size=64, seed=1, group="wide", pitch_range=(200.0, 200.0))
    empty = sum(not read_image(mask).any() for mask in sorted((folder / "mask").iterdir()))
    assert 0 < empty < 12  # seed 1 draws some tiles with a mark and some without
    (said,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == (f"{empty} of 12 tiles in {folder} hold no mark (their masks are empty): with pitches up to 200 px "
                    "on 64 px tiles a lattice may miss a tile; give a --pitch-max well under --size, "
                    "or a larger --size")
    caplog.clear()
    with caplog.at_level("WARNING", logger="am.synth.dataset"):
        write_tiles(tmp_path, count=6, size=64, seed=1, group="usual")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
