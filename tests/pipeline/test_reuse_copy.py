"""Reuse across copies: a dataset copied with ``cp -r`` (new modification times, same bytes) keeps
every tile and mask, while a source with the same size but other bytes is cut again.

The source's identity in meta.json is name, size, modification time and SHA-256: the time is
the fast path, the hash decides when only the time changed. Plans written before the hash was
recorded match on the time alone, as they always did, and get the hash on their next reuse.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import tifffile
from faults.harness import lattice_image, make_dataset

from am.dataset import DatasetLayout
from am.files import file_sha256
from am.imageio import write_png
from am.prepare import GroupTiler, prepare_group, reuse_group
from am.settings import Settings

SETTINGS = Settings(tile_size=64, tile_overlap=16)
MODEL = "m"


def _finished(layout: DatasetLayout, group: str = "g1") -> int:
    """Cut the group's tiles and give every one a mask, as a finished run leaves them; the tile count."""
    prepared = prepare_group(layout, group, settings=SETTINGS, model_id=MODEL)
    for index in prepared.pending:
        write_png(layout.tile_mask(group, index), np.zeros((SETTINGS.tile_size,) * 2, np.uint8))
    return prepared.n_tiles


def _copy(src: Path, dst: Path) -> Path:
    """``cp -r``: the same bytes, new modification times (made certainly new, not left to the clock)."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for path in dst.rglob("*"):
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 7 * 10**9))
    return dst


def _source_record(layout: DatasetLayout, group: str = "g1") -> dict:
    return json.loads(layout.tile_plan(group).read_text())["identity"]["source"]


def _tiff_dataset(root: Path) -> Path:
    """An uncompressed TIFF, so that other pixels keep the file's size exactly."""
    folder = root / "source" / "g1"
    folder.mkdir(parents=True)
    tifffile.imwrite(folder / "image.tif", lattice_image(150, 170, seed=3))
    return root


def test_a_copy_with_new_times_reuses_every_mask_and_records_the_new_time(tmp_path):
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": (150, 170)}))
    n_tiles = _finished(layout)
    assert _source_record(layout)["sha256"] == file_sha256(layout.source_image("g1"))

    copy = DatasetLayout(_copy(layout.root, tmp_path / "copy"))
    assert _source_record(copy) == _source_record(layout)
    assert copy.source_image("g1").stat().st_mtime_ns != _source_record(copy)["mtime_ns"]

    reused = reuse_group(copy, "g1", settings=SETTINGS, model_id=MODEL)
    assert reused is not None and reused.n_tiles == n_tiles and reused.pending == ()
    # The new time is recorded with the same hash: the next check needs no read.
    record = _source_record(copy)
    assert record["mtime_ns"] == copy.source_image("g1").stat().st_mtime_ns
    assert record["sha256"] == _source_record(layout)["sha256"]
    assert reuse_group(copy, "g1", settings=SETTINGS, model_id=MODEL).pending == ()


def test_same_size_other_bytes_and_a_new_time_is_cut_again(tmp_path):
    layout = DatasetLayout(_tiff_dataset(tmp_path / "ds"))
    _finished(layout)
    source = layout.source_image("g1")
    size = source.stat().st_size
    tifffile.imwrite(source, lattice_image(150, 170, seed=4))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert source.stat().st_size == size

    assert reuse_group(layout, "g1", settings=SETTINGS, model_id=MODEL) is None
    prepared = prepare_group(layout, "g1", settings=SETTINGS, model_id=MODEL)
    assert prepared.pending == tuple(range(prepared.n_tiles))
    assert _source_record(layout)["sha256"] == file_sha256(source)


def test_a_plan_without_a_hash_matches_on_the_time_alone_and_gets_the_hash_when_reused(tmp_path):
    """Plans of older versions: the same time reuses (and records the hash), another time cuts again."""
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": (150, 170)}))
    _finished(layout)
    plan = layout.tile_plan("g1")
    meta = json.loads(plan.read_text())
    del meta["identity"]["source"]["sha256"]
    plan.write_text(json.dumps(meta))
    old_copy = _copy(layout.root, tmp_path / "old-copy")

    assert reuse_group(layout, "g1", settings=SETTINGS, model_id=MODEL).pending == ()
    assert _source_record(layout)["sha256"] == file_sha256(layout.source_image("g1"))
    # A copy of the plan as the older version left it cannot compare contents: cut again, as before.
    assert reuse_group(DatasetLayout(old_copy), "g1", settings=SETTINGS, model_id=MODEL) is None


def test_a_copy_of_a_run_stopped_while_cutting_keeps_its_masks(tmp_path):
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": (300, 300)}))
    tiler = GroupTiler(layout, "g1", settings=SETTINGS, model_id=MODEL)
    tiler.normalise()
    first = next(iter(tiler.chunks()))
    for index, _ in first.tiles:
        write_png(layout.tile_mask("g1", index), np.zeros((SETTINGS.tile_size,) * 2, np.uint8))
    masked = {index for index, _ in first.tiles}

    copy = DatasetLayout(_copy(layout.root, tmp_path / "copy"))
    assert reuse_group(copy, "g1", settings=SETTINGS, model_id=MODEL) is None  # incomplete plan
    again = GroupTiler(copy, "g1", settings=SETTINGS, model_id=MODEL)
    plan = again.normalise()
    sent = [index for chunk in again.chunks() for index, _ in chunk.tiles]
    assert sent == [t.index for t in plan.tiles if t.index not in masked]
    assert set(again.finish().pending) == set(sent)
    assert _source_record(copy)["mtime_ns"] == copy.source_image("g1").stat().st_mtime_ns


def test_a_run_with_other_settings_says_which_changed():
    from am.prepare import _settings_changes, _settings_identity
    from am.settings import Settings

    meta = {"identity": {**_settings_identity(Settings(), "a" * 64, None), "source": {"size": 1}}}
    assert _settings_changes(meta, Settings(), "a" * 64, None) == []
    changes = _settings_changes(meta, Settings(scale="auto", tile_overlap=96), "b" * 64, None)
    assert changes == [f"model {'a' * 12} -> {'b' * 12}", f"scale {Settings().scale} -> auto",
                       f"tile_overlap {Settings().tile_overlap} -> 96"]
