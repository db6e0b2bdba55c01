"""The whole command, as a user runs it: local backend, embedded endpoint, two real worker processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from faults.harness import port_is_closed, processes_with_marker

from am.imageio import read_image
from am.model.predict import Predictor
from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]
TILE = ["--tile-size", "128", "--tile-overlap", "32"]


def run_pipeline(dataset: Path, model: Path, tmp_path: Path, *extra: str, marker: str) -> subprocess.CompletedProcess:
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"), AMSEGM_TEST_MARKER=marker, AM_IDLE_EXIT_S="30",
                    PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "am.pipeline", str(dataset), "--workers", "2", "--model", str(model),
         "--no-progress", *TILE, *extra],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )


def test_pipeline_segments_every_tile_through_workers_and_leaves_nothing_running(small_dataset, tiny_model,
                                                                                  tmp_path):
    marker = uuid.uuid4().hex
    result = run_pipeline(small_dataset, tiny_model, tmp_path, "--no-register", marker=marker)
    assert result.returncode == 0, result.stderr[-4000:]

    # Outputs exist at exactly the input's size.
    for group in ("g1", "g2"):
        source = read_image(next((small_dataset / "source" / group).iterdir()))
        mask = tifffile.imread(small_dataset / "tiles_stitched" / group / "mask.tiff")
        assert mask.shape == source.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        overlay = cv2.imread(str(small_dataset / "tiles_stitched" / group / "overlay.png"))
        assert overlay.shape == (*source.shape[:2], 3)
        norm = tifffile.imread(small_dataset / "source_norm" / group / "source.tiff")
        assert norm.shape == source.shape[:2] and norm.dtype == np.uint8

    # Every tile went through a worker: each mask tile is the model's prediction for that exact tile.
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu")
    n_tiles = 0
    for group in ("g1", "g2"):
        meta = json.loads((small_dataset / "tiles" / group / "meta.json").read_text())
        indices = [tile["index"] for tile in meta["plan"]["tiles"]]
        tiles = np.stack([cv2.imread(str(small_dataset / "tiles" / group / "source" / f"{i:04d}.png"),
                                     cv2.IMREAD_GRAYSCALE) for i in indices])
        masks = np.stack([cv2.imread(str(small_dataset / "tiles" / group / "mask" / f"{i:04d}.png"),
                                     cv2.IMREAD_GRAYSCALE) for i in indices])
        assert np.array_equal(predictor.predict(tiles), masks)
        n_tiles += len(indices)
    assert f"{n_tiles} tile(s) segmented" in result.stdout

    # Nothing is left running: no worker process, no endpoint port.
    assert processes_with_marker(marker) == []
    urls = re.findall(r"endpoint listening on (http://127\.0\.0\.1:\d+)", result.stderr)
    assert urls and port_is_closed(urls[0])
    assert len(re.findall(r"started worker \d+ \(pid", result.stderr)) == 2

    # A second run reuses every finished tile and starts no job.
    again = run_pipeline(small_dataset, tiny_model, tmp_path, "--no-register", marker=marker)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"{n_tiles} reused" in again.stdout and "nothing to segment" in again.stderr
    assert "started worker" not in again.stderr


def test_bad_dataset_fails_clearly_without_starting_anything(tmp_path, tiny_model):
    marker = uuid.uuid4().hex
    empty = tmp_path / "empty"
    (empty / "source").mkdir(parents=True)
    result = run_pipeline(empty, tiny_model, tmp_path, marker=marker)
    assert result.returncode == 1
    assert "no group folders" in result.stderr
    assert "endpoint listening" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--rows", "0", "--cols", "5"], "--rows must be a positive whole number of grid positions"),
    (["--rows", "5"], "give --rows and --cols together"),
    (["--rows", "5", "--cols", "5", "--no-register"], "--rows/--cols number the marks, which --no-register leaves out"),
    (["--wait-for-lock", "-1"], "--wait-for-lock -1.0 must be a finite number of seconds >= 0"),
])
def test_bad_grid_arguments_are_usage_errors(small_dataset, tiny_model, tmp_path, args, message):
    result = run_pipeline(small_dataset, tiny_model, tmp_path, *args, marker="x")
    assert result.returncode == 2 and message in result.stderr


def test_the_users_command_numbers_an_acquisition_with_unevenly_spaced_rows(tmp_path):
    """The shipped model and the default settings, as `python -m am.pipeline DIR --rows R --cols C`
    runs them, on rows 0.65 to 1.3 pitches apart that slide along themselves (the real tile_b)."""
    from am.register.testing import LatticeMask, wrong_ids
    from am.synth.dataset import write_dataset
    from am.synth.lattice import Lattice

    dataset = tmp_path / "uneven"
    write_dataset(dataset, rows=16, cols=16, seed=4, uneven_rows=True)
    record = json.loads((dataset / "truth" / "group01" / "lattice.json").read_text())
    assert len(record["row_across_px"]) == 16 and np.ptp(np.diff(record["row_across_px"])) > 0.3 * record["pitch_y"]
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"), AM_IDLE_EXIT_S="30", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "am.pipeline", str(dataset), "--rows", "16", "--cols", "16",
                             "--workers", "2", "--no-progress"],
                            env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = read_image(dataset / "truth" / "group01" / "ids.png")
    ids = read_image(dataset / "am_coords" / "group01" / "am_coordinates.png")
    drawn = LatticeMask(mask=truth > 0, truth=truth, present=np.unique(truth[truth > 0]).astype(np.int64),
                        lattice=Lattice(rows=16, cols=16, pitch_x=record["pitch_x"], pitch_y=record["pitch_y"]))
    wrong = wrong_ids(drawn, ids)
    # A mark counts as wrong when most of its pixels lack its id: none may carry another mark's id.
    assert wrong.size <= 0.01 * drawn.present.size, wrong
    numbered, true_ids = ids[truth > 0], truth[truth > 0]
    assert np.count_nonzero((numbered > 0) & (numbered != true_ids)) <= 0.005 * true_ids.size
    registration = json.loads((dataset / "am_coords" / "group01" / "registration.json").read_text())
    assert registration["row_spacing"] == "uneven"
    assert "registration group01:" in result.stdout and "rows unevenly spaced" in result.stdout
