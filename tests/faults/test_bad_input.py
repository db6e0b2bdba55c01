"""Bad input: every case ends in a clear error naming the file or value, a non-zero exit, and nothing
half-written that could pass for a result; or, where the input is odd but usable, it works.

Errors found before any worker starts are checked through the command-line entry in this
process (the same ``main`` a user runs, exit codes included); the cases that need workers run
the real command as a subprocess.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from api.servers import png_bytes

from am.dataset import DatasetLayout
from am.imageio import read_image, write_png
from am.model_source import resolve_model
from am.prepare import prepare_group
from am.settings import load_settings

from .harness import assert_nothing_left, lattice_image, make_dataset, run_to_end

TILE = ["--tile-size", "128", "--tile-overlap", "32"]


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path, tiny_model) -> Iterator:
    """``python -m am.pipeline`` in this process: returns (exit code, stderr) for the given arguments."""
    from am.pipeline.__main__ import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sigterm = signal.getsignal(signal.SIGTERM)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*args: str, model: Path | None = tiny_model) -> tuple[int, str]:
        argv = [*TILE, "--no-progress", *(["--model", str(model)] if model else []), *args]  # the last option wins
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    yield run
    signal.signal(signal.SIGTERM, sigterm)
    root.handlers[:] = handlers
    root.setLevel(level)


def nothing_presented(dataset: Path, group: str = "g1") -> None:
    """No tile plan (the marker of complete tiles), no stitched mask, no grid ids for the group."""
    for path in (dataset / "tiles" / group / "meta.json", dataset / "tiles_stitched" / group,
                 dataset / "am_coords" / group):
        assert not path.exists(), f"{path} was written by a run that failed"


def dataset_with(tmp_path: Path, name: str, data: bytes | None = None, *, array: np.ndarray | None = None) -> Path:
    root = tmp_path / "ds"
    folder = root / "source" / "g1"
    folder.mkdir(parents=True)
    if array is not None:
        tifffile.imwrite(folder / name, array)
    elif data is not None:
        (folder / name).write_bytes(data)
    return root


# ---------------------------------------------------------------------------------- datasets


def test_missing_and_empty_dataset_folders(cli, tmp_path):
    code, err = cli(str(tmp_path / "nowhere"))
    assert code == 1 and f"dataset folder {tmp_path / 'nowhere'} does not exist" in err
    (tmp_path / "no-source").mkdir()
    code, err = cli(str(tmp_path / "no-source"))
    assert code == 1 and "has no source/ folder" in err
    (tmp_path / "empty" / "source").mkdir(parents=True)
    code, err = cli(str(tmp_path / "empty"))
    assert code == 1 and "holds no group folders" in err
    assert "endpoint listening" not in err


def test_group_without_image_and_group_with_two_images(cli, tmp_path):
    root = dataset_with(tmp_path, "notes.txt", b"not an image")
    code, err = cli(str(root))
    assert code == 1 and f"group folder {root / 'source' / 'g1'} has no image" in err
    for name in ("a.png", "b.tif"):
        (root / "source" / "g1" / name).write_bytes(b"x")
    code, err = cli(str(root))
    assert code == 1 and "has 2 images (a.png, b.tif); keep exactly one per group" in err
    nothing_presented(root)


@pytest.mark.parametrize("name, data, words", [
    ("image.tif", b"II*\x00\x08\x00\x00\x00\x0f\x00", "cannot be read as TIFF"),  # header, then nothing
    ("image.tif", b"", "is empty (0 bytes)"),
    ("image.png", b"", "is empty (0 bytes)"),
    ("image.png", b"GIF89a" + bytes(40), "is not a PNG file"),
    ("image.png", "truncated", "is truncated: its 'IDAT' chunk at byte"),
    ("image.tif", "truncated", "is truncated: its pixel data runs to byte"),
    ("image.png", "flipped", "chunk at byte 24645 fails its CRC check"),
    ("image.jpg", b"\xff\xd8\xff", "image.jpg, a JPEG file, which is not read"),
])
def test_unreadable_truncated_or_empty_images(cli, tmp_path, name, data, words):
    if data == "truncated":
        full = (png_bytes(lattice_image(300, 300)) if name.endswith(".png")
                else _tiff_bytes(tmp_path, lattice_image(300, 300)))
        data = full[: len(full) // 2]
    elif data == "flipped":
        data = bytearray(png_bytes(lattice_image(300, 300)))
        data[len(data) // 2] ^= 0x10
    root = dataset_with(tmp_path, name, data)
    code, err = cli(str(root))
    assert code == 1, err
    assert words in err and "g1" in err, err
    # Refused before a worker starts.
    assert "started worker" not in err and "embedded S3/SQS endpoint" not in err, err
    nothing_presented(root)
    assert not (root / "source_norm" / "g1").exists()


def _tiff_bytes(tmp_path: Path, image: np.ndarray) -> bytes:
    path = tmp_path / "whole.tif"
    tifffile.imwrite(path, image)
    return path.read_bytes()


def test_nan_and_inf_in_a_float_tiff(cli, tmp_path):
    image = lattice_image(200, 200).astype(np.float32)
    image[5, 5], image[7, 9] = np.nan, np.inf
    root = dataset_with(tmp_path, "image.tif", array=image)
    code, err = cli(str(root))
    assert code == 1 and "has 2 pixel(s) with NaN or infinite values" in err and "image.tif" in err
    nothing_presented(root)
    assert not (root / "source_norm" / "g1").exists()


def test_image_above_the_size_limit_is_refused_from_its_header(cli, tmp_path):
    """A 50000 x 50000 TIFF (sparse on disk) is refused before its pixels are read: clear limit, no memory spike."""
    root = dataset_with(tmp_path, "image.tif")
    tifffile.imwrite(root / "source" / "g1" / "image.tif", shape=(50000, 50000), dtype="uint8")
    code, err = cli(str(root))
    assert code == 1 and "50000 x 50000 = 2500000000 pixels, above the limit" in err and "crop or split" in err
    nothing_presented(root)


def test_png_above_the_size_limit_is_refused_from_its_header(cli, tmp_path):
    header = png_bytes(np.zeros((1, 1), np.uint8))
    huge = header[:16] + (45000).to_bytes(4, "big") + (45000).to_bytes(4, "big") + header[24:]
    root = dataset_with(tmp_path, "image.png", huge)
    code, err = cli(str(root))
    assert code == 1 and "45000 x 45000" in err and "above the limit" in err


@pytest.mark.parametrize("shape", [(1, 1), (360, 1), (1, 360)], ids=["1x1", "1px-wide", "1px-high"])
def test_image_too_thin_for_the_model_is_refused_before_any_worker_starts(cli, tmp_path, shape):
    """Padded to a tile, a 1 px strip is stripes to the model: it marked about 95 % of such a strip."""
    root = dataset_with(tmp_path, "image.tif", array=np.full(shape, 77, np.uint8))
    code, err = cli(str(root))
    assert code == 1 and f"image.tif is {shape[0]} x {shape[1]} px (height x width)" in err
    assert "at least 32 px on each side" in err and "started worker" not in err
    nothing_presented(root)
    assert not (root / "source_norm").exists()


# ------------------------------------------------------------------------- options and config


@pytest.mark.parametrize("args, words", [
    (["--rows", "0", "--cols", "5"], "--rows must be a positive whole number of grid positions, got 0"),
    (["--rows", "-3", "--cols", "5"], "--rows must be a positive whole number of grid positions, got -3"),
    (["--rows", "4", "--cols", "-1"], "--cols must be a positive whole number of grid positions, got -1"),
    (["--rows", "5"], "give --rows and --cols together"),
    (["--rows", "300", "--cols", "300"], "a 300 x 300 grid has more than 65535 positions, the most a 16-bit id "
                                         "image can number; crop the image into parts"),
    (["--rows", "1", "--cols", "1"], "a 1 x 1 grid has 1 position(s), but registration fits the grid to at least 4 "
                                     "marks: give the acquisition's own --rows and --cols"),
    (["--rows", "3", "--cols", "1"], "a 3 x 1 grid has 3 position(s)"),
    (["--rows", "many", "--cols", "5"], "invalid int value: 'many'"),
    (["--workers", "0"], "setting workers = 0 is not allowed"),
    (["--tile-size", "100"], "setting tile_size = 100 is not allowed"),
    (["--scale", "0"], "setting scale = 0.0 is not allowed"),
    (["--scale", "big"], "argument --scale: 'big' is not a number or auto"),
    (["--scale", "nan"], "setting scale = nan is not allowed: it must be between 0.1 and 10, or auto"),
    (["--tile-overlap", "512"], "setting tile_overlap = 512 is not allowed"),
    (["--batch-size", "-1"], "setting batch_size = -1 is not allowed"),
])
def test_bad_options(cli, tmp_path, args, words):
    """A malformed option exits 2, whether argparse or the settings refuse it."""
    root = make_dataset(tmp_path / "ds", {"g1": (200, 200)})
    code, err = cli(str(root), *args)
    assert code == 2 and words in err, err
    nothing_presented(root)


def test_a_bad_value_from_the_environment_exits_1_naming_the_variable(cli, tmp_path, monkeypatch):
    """Not a usage error: the command line is fine, the environment is not."""
    root = make_dataset(tmp_path / "ds", {"g1": (200, 200)})
    monkeypatch.setenv("AM_SCALE", "0")
    code, err = cli(str(root))
    assert code == 1 and "setting scale = 0.0 is not allowed" in err and "environment variable AM_SCALE" in err, err
    nothing_presented(root)


def test_far_more_rows_and_cols_than_marks_fails_registration_and_drops_stale_ids(cli, tmp_path, tiny_model):
    """Registration refuses a grid the marks cannot fill; no id table, not even one from an earlier run, remains."""
    root = make_dataset(tmp_path / "ds", {"g1": (400, 400)})
    # Tiles and masks as a finished segmentation leaves them (the marks thresholded), so no worker is needed.
    settings = load_settings({"model": str(tiny_model), "tile_size": 128, "tile_overlap": 32})
    _, model_id = resolve_model(settings, cache_dir=tmp_path / "cache")
    layout = DatasetLayout(root)
    prepared = prepare_group(layout, "g1", settings=settings, model_id=model_id)
    for tile in prepared.plan.tiles:
        source = read_image(layout.tile_source("g1", tile.index))
        write_png(layout.tile_mask("g1", tile.index), np.where(source > 150, 255, 0).astype(np.uint8))
    stale = layout.am_coords_dir("g1") / "am_coordinates.csv"
    stale.parent.mkdir(parents=True)
    stale.write_text("id,row,col,x,y,area_px\n1,0,0,5,5,9\n")

    code, err = cli(str(root), "--rows", "60", "--cols", "60")
    assert code == 1, err
    assert "given 60 x 60 = 3600 positions but the mask holds only 121 marks" in err, err
    assert "check --rows/--cols" in err, err
    assert not layout.am_coords_dir("g1").exists(), "ids of an earlier registration survived a failed one"
    # Segmentation itself succeeded, so its mask is a real result.
    assert read_image(layout.stitched_mask("g1")).shape == (400, 400)


def test_missing_malformed_and_unknown_config(cli, tmp_path):
    root = make_dataset(tmp_path / "ds", {"g1": (200, 200)})
    code, err = cli(str(root), "--config", str(tmp_path / "absent.yml"))
    assert code == 1 and f"config file {tmp_path / 'absent.yml'} does not exist" in err
    for text, words in (("workers: [1, 2\n", "cannot be read as YAML"),
                        ("- just\n- a list\n", "must hold 'key: value' pairs"),
                        ("wrokers: 2\n", "unknown key(s) wrokers"),
                        ("workers: two\n", "workers = 'two' is not a valid int")):
        config = tmp_path / "config.yml"
        config.write_text(text)
        code, err = cli(str(root), "--config", str(config))
        assert code == 1 and words in err and str(config) in err, err
    nothing_presented(root)


# ------------------------------------------------------------------------------------ models


def test_model_that_is_not_a_checkpoint_fails_before_any_worker_starts(cli, tmp_path):
    root = make_dataset(tmp_path / "ds", {"g1": (200, 200)})
    model = tmp_path / "notes.pt"
    model.write_text("these are not weights")
    code, err = cli(str(root), model=model)
    assert code == 1 and f"model {model} cannot be used" in err
    assert "is not a torch checkpoint: it does not start as one" in err
    assert "pass a checkpoint written by python -m am.train" in err
    assert "endpoint listening" not in err and "started worker" not in err
    nothing_presented(root)


def test_checkpoint_for_another_architecture_fails_before_any_worker_starts(cli, tmp_path, tiny_model):
    root = make_dataset(tmp_path / "ds", {"g1": (200, 200)})
    payload = torch.load(tiny_model, weights_only=True)
    other = tmp_path / "fpn.pt"
    torch.save({**payload, "meta": {**payload["meta"], "architecture": "FPN"}}, other)
    code, err = cli(str(root), model=other)
    assert code == 1 and "architecture 'FPN' is not supported" in err and str(other) in err
    resnet = tmp_path / "resnet.pt"  # the tiny model's weights, described as a ResNet-18 U-Net
    torch.save({**payload, "meta": {**payload["meta"], "encoder": "resnet18", "decoder_channels": [256, 128, 64,
                                                                                                   32, 16]}}, resnet)
    code, err = cli(str(root), model=resnet)
    assert code == 1 and "weights do not fit a Unet/resnet18" in err and str(resnet) in err
    assert "started worker" not in err
    nothing_presented(root)


# ------------------------------------------------------------------------ odd but usable input


def test_16_bit_image_with_tiny_range_works(tmp_path, tiny_model):
    root = tmp_path / "ds"
    (root / "source" / "faint").mkdir(parents=True)
    faint = 30000 + (lattice_image(150, 170) > 150).astype(np.uint16) * 3  # four grey levels in 65536
    tifffile.imwrite(root / "source" / "faint" / "image.tif", faint)

    run = run_to_end(root, tiny_model, tmp_path, "--no-register", "faint")  # a group may follow the options
    assert run.proc.returncode == 0, run.stderr[-4000:]
    assert read_image(root / "tiles_stitched" / "faint" / "mask.tiff").shape == (150, 170)
    norm = read_image(root / "source_norm" / "faint" / "source.tiff")
    assert (norm.min(), norm.max()) == (0, 255), "a tiny 16-bit range must be stretched to the full 8 bits"
    assert_nothing_left(run)
