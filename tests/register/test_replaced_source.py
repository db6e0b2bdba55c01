"""Registration refuses a stitched mask made from another image than the group's source now is.

``am.synth dataset --force``, or a new file put in place of the old one, replaces a group's source while
the pipeline's outputs (normalised source, tiles, stitched mask) stay: registering them would number
another image's marks and exit 0. The tile plan records the source it was made from (name, size, time,
SHA-256), and registration compares it, by the same rule as the pipeline's reuse.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from faults.harness import lattice_image, make_dataset

from am.dataset import DatasetLayout
from am.errors import InputError
from am.prepare import prepare_group, source_replaced
from am.register import register_group
from am.register.dataset import mask_path, output_dir
from am.settings import Settings

REPO = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH = 150, 170  # a 4 x 5 lattice of discs (pitch 36 px)


def _segmented(root: Path) -> DatasetLayout:
    """A group as the pipeline leaves it: planned tiles (meta.json), normalised source and its stitched mask."""
    layout = DatasetLayout(make_dataset(root, {"g1": (HEIGHT, WIDTH)}))
    prepare_group(layout, "g1", settings=Settings(tile_size=64, tile_overlap=16), model_id="m")
    marks = np.where(lattice_image(HEIGHT, WIDTH) == 200, 255, 0).astype(np.uint8)
    mask_path(layout.root, "g1").parent.mkdir(parents=True)
    tifffile.imwrite(mask_path(layout.root, "g1"), marks)
    return layout


def _replace_source(layout: DatasetLayout, *, seed: int) -> Path:
    source = layout.source_image("g1")
    cv2.imwrite(str(source), lattice_image(HEIGHT, WIDTH, seed=seed))
    return source


def test_a_replaced_source_is_refused_and_the_old_ids_go(tmp_path):
    layout = _segmented(tmp_path / "ds")
    assert register_group(layout.root, "g1", rows=4, cols=5).assigned == 20
    source = _replace_source(layout, seed=7)  # the same size, other pixels: the hash tells
    with pytest.raises(InputError, match="not the image .* was made from") as caught:
        register_group(layout.root, "g1", rows=4, cols=5)
    assert str(source) in str(caught.value) and "am.pipeline" in str(caught.value)
    assert not output_dir(layout.root, "g1").exists()  # the ids of the replaced image are not left to be read


def test_the_command_exits_1_naming_the_image(tmp_path):
    layout = _segmented(tmp_path / "ds")
    source = _replace_source(layout, seed=7)
    done = subprocess.run([sys.executable, "-m", "am.register", str(layout.root), "--rows", "4", "--cols", "5"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"{source} is not the image" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_same_image_touched_or_copied_registers(tmp_path):
    layout = _segmented(tmp_path / "ds")
    source = layout.source_image("g1")
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))  # same bytes: the hash says so
    assert source_replaced(layout, "g1") is None
    assert register_group(layout.root, "g1", rows=4, cols=5).assigned == 20


def test_without_a_plan_or_a_source_nothing_tells(tmp_path):
    layout = _segmented(tmp_path / "ds")
    layout.source_image("g1").unlink()  # a source taken away after the run: the outputs are all there is
    assert source_replaced(layout, "g1") is None
    assert register_group(layout.root, "g1", rows=4, cols=5).assigned == 20
    layout.tile_plan("g1").unlink()  # masks made elsewhere: no record to compare with
    assert source_replaced(layout, "g1") is None
