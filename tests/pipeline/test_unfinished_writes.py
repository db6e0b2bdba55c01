"""Writes that fail or never finish: the error names the output, and nothing unfinished stays behind.

A write that fails names the file the user asked for, never the temporary file beside it; a
process killed mid-write leaves a temporary file that the next run on the dataset removes; a
mask folder that cannot be written is found before any worker starts; and an overlay that fails
the run is reported once, not a second time as a failure "while the run was failing".
"""

from __future__ import annotations

import errno
import logging
import os
from concurrent.futures import Future
from pathlib import Path

import pytest
from faults.harness import make_dataset, mask_files, read_only

import am.orchestrator
from am.dataset import DatasetLayout
from am.files import atomic_output, remove_leftover_temporaries, write_atomic
from am.orchestrator import _check_outputs_writable, _log_overlay_errors, run_pipeline
from am.settings import Settings

SETTINGS = Settings(tile_size=64, tile_overlap=16, workers=1)
HEX = "0123456789abcdef" * 2


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def test_a_full_disk_while_writing_names_the_output(tmp_path):
    target = tmp_path / "mask" / "0003.png"
    with pytest.raises(OSError) as failed, atomic_output(target) as handle:
        handle.write(b"half a PNG")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() raises: no file named
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(target)
    assert _leftovers(target.parent) == [] and not target.exists()


def test_a_read_only_folder_names_the_output_not_its_temporary_file(tmp_path):
    folder = tmp_path / "mask"
    folder.mkdir()
    target = folder / "0003.png"
    with read_only(folder) as reason, pytest.raises(OSError, match=reason) as failed:
        write_atomic(target, b"png")
    assert failed.value.filename == str(target)
    assert ".tmp" not in str(failed.value)


def test_an_error_about_another_file_is_left_as_it_is(tmp_path):
    other = OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(tmp_path / "input.tif"))
    with pytest.raises(OSError) as failed, atomic_output(tmp_path / "out.tif"):
        raise other
    assert failed.value is other


def test_a_network_error_from_streamed_chunks_is_not_blamed_on_the_output(tmp_path):
    def chunks():
        yield b"first part of a download"
        raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))

    with pytest.raises(ConnectionResetError) as failed:
        write_atomic(tmp_path / "model.pt", chunks())
    assert failed.value.filename is None
    assert _leftovers(tmp_path) == [] and not (tmp_path / "model.pt").exists()


def test_only_the_temporary_files_of_atomic_output_are_removed(tmp_path):
    folder = tmp_path / "mask"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    killed = [f".0008.png.{HEX}.tmp", f".meta.json.{HEX}.tmp"]
    for name in killed:
        (folder / name).write_bytes(b"half")
    kept = ["0008.png", ".0008.png.tmp", f"0008.png.{HEX}.tmp", f".0008.png.{HEX.upper()}.tmp", "notes.tmp"]
    for name in kept:
        (folder / name).write_bytes(b"keep")
    (folder / f".link.png.{HEX}.tmp").symlink_to(victim)
    (folder / f".dir.png.{HEX}.tmp").mkdir()

    assert remove_leftover_temporaries(folder) == len(killed)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*kept, f".link.png.{HEX}.tmp", f".dir.png.{HEX}.tmp"])
    assert victim.read_bytes() == b"precious"
    assert remove_leftover_temporaries(tmp_path / "absent") == 0


def test_a_rerun_removes_what_a_run_killed_mid_write_left_in_the_tile_folders(tmp_path, tiny_model, monkeypatch):
    dataset = make_dataset(tmp_path / "ds", {"g1": (150, 170)})

    def run() -> None:
        run_pipeline(dataset, settings=SETTINGS.replace(model=str(tiny_model)), register=False,
                     cache_dir=tmp_path / "cache", show_progress=False)

    run()
    masks = {path.name: path.read_bytes() for path in mask_files(dataset, "g1")}
    assert masks
    tiles = dataset / "tiles" / "g1"
    for folder in ("source", "mask"):
        (tiles / folder / f".0001.png.{HEX}.tmp").write_bytes(b"half a PNG")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("workers were started for a run with every mask in place")

    monkeypatch.setattr(am.orchestrator, "open_backend", refuse)
    run()
    assert _leftovers(tiles / "source") == [] and _leftovers(tiles / "mask") == []
    assert {path.name: path.read_bytes() for path in mask_files(dataset, "g1")} == masks


def test_a_mask_folder_that_cannot_be_written_is_found_before_the_workers_start(tmp_path):
    layout = DatasetLayout(tmp_path / "ds")
    mask_folder = layout.tile_mask("g", 0).parent
    mask_folder.mkdir(parents=True)
    with read_only(mask_folder) as reason, pytest.raises(OSError, match=reason) as failed:
        _check_outputs_writable(layout, ["g"], register=False)
    assert failed.value.filename == str(mask_folder)


def _failed(error: BaseException) -> Future[None]:
    future: Future[None] = Future()
    future.set_exception(error)
    return future


def test_the_overlay_error_that_fails_the_run_is_not_logged_again(caplog):
    caplog.set_level(logging.ERROR, logger="am.orchestrator")
    raised = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/ds/tiles_stitched/g1/overlay.png")
    other = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/ds/tiles_stitched/g2/overlay.png")
    done: Future[None] = Future()
    done.set_result(None)
    _log_overlay_errors([_failed(raised), done, _failed(other)], raised=raised)
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and "g2/overlay.png" in said[0], said
