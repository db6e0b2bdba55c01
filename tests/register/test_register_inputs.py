"""What am.register makes of the input files a user may hand it: damaged, grey, 1-bit or missing
masks and sources, mistyped groups; and ids at the image's border, drawn whole in the overlay."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from am.errors import InputError
from am.imageio import write_tiff
from am.register import dataset as register_dataset
from am.register import overlay, register_group, register_mask
from am.register.dataset import mask_path, read_grey_tiff, source_path
from am.register.testing import draw_lattice_mask
from am.synth.lattice import Lattice

REPO = Path(__file__).resolve().parents[2]
ROWS, COLS = 5, 6
WIDTH, HEIGHT = 260, 220


def drawn_mask(*, angle_deg: float = 4) -> np.ndarray:
    """A 5 x 6 grid of 0/255 marks, one (id 2) missing: 29 marks to number."""
    lattice = Lattice.centred(rows=ROWS, cols=COLS, width=WIDTH, height=HEIGHT, pitch_x=32, angle_deg=angle_deg)
    return draw_lattice_mask(lattice, width=WIDTH, height=HEIGHT, radius=8, missing=[2]).mask


def make_group(dataset: Path, group: str = "g", *, mask: np.ndarray | None = None, source: bool = True) -> Path:
    """A group as am.pipeline leaves it: a zlib-compressed mask (am.imageio.write_tiff) and its source."""
    mask = drawn_mask() if mask is None else mask
    write_tiff(mask_path(dataset, group), mask)
    if source:
        write_tiff(source_path(dataset, group), np.where(mask > 0, 200, 40).astype(np.uint8))
    return dataset


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "am.register", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


# 1. A damaged mask fails its group with a message, not a traceback that stops the other groups.

def test_a_truncated_compressed_mask_fails_its_group_and_the_next_group_is_still_registered(tmp_path):
    dataset = make_group(make_group(tmp_path / "ds", "a"), "b")
    damaged = mask_path(dataset, "a")
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    result = run_cli(str(dataset), "--rows", str(ROWS), "--cols", str(COLS))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: group a: the stitched mask image {damaged} cannot be read as TIFF" in result.stderr
    assert "b: 29 marks numbered" in result.stdout, result.stderr
    assert "error: 1 of 2 group(s) failed" in result.stderr


def test_damaged_masks_are_input_errors_that_name_the_file(tmp_path):
    path = tmp_path / "mask.tiff"
    write_tiff(path, drawn_mask())
    whole = path.read_bytes()
    rng = np.random.default_rng(0)
    for case in range(30):
        data = bytearray(whole)
        if case % 2:
            data = data[: int(rng.integers(8, len(data)))]
        else:
            for _ in range(5):
                data[int(rng.integers(8, len(data)))] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            read_grey_tiff(path, what="stitched mask")
        except InputError as exc:
            assert str(path) in str(exc)


# 2. A mask with grey levels is cut at 128, with a warning naming the file.

def soft_mask(mask: np.ndarray) -> np.ndarray:
    """A probability map: background 1-19, marks 200-255."""
    rng = np.random.default_rng(1)
    return np.where(mask > 0, rng.integers(200, 256, mask.shape), rng.integers(1, 20, mask.shape)).astype(np.uint8)


@pytest.mark.parametrize("kind", ["soft", "jpeg"])
def test_a_grey_mask_is_cut_at_128_with_a_warning_that_names_it(tmp_path, caplog, kind):
    dataset = make_group(tmp_path / "ds")
    path = mask_path(dataset, "g")
    if kind == "soft":
        write_tiff(path, soft_mask(drawn_mask()))
    else:
        tifffile.imwrite(path, drawn_mask(), compression="jpeg", compressionargs={"level": 50})
    levels = np.unique(tifffile.imread(path)).size
    assert levels > 2
    with caplog.at_level(logging.WARNING, logger="am.register"):
        assert register_group(dataset, "g", rows=ROWS, cols=COLS).assigned == 29
    assert any(str(path) in r.getMessage() and f"has {levels} grey levels" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING), caplog.text


def test_a_mask_of_0_and_1_keeps_1_as_mark_without_a_warning(tmp_path, caplog):
    path = tmp_path / "mask.tiff"
    mask = drawn_mask()
    write_tiff(path, (mask > 0).astype(np.uint8))
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(register_dataset.read_mask(path), mask)
    assert not caplog.records


# 3. Ids of marks at the image's border are drawn whole, inside the image.

@pytest.mark.parametrize("centre", [(0.0, 0.0), (3.0, 50.0), (99.0, 0.0), (99.0, 79.0), (50.0, 79.5), (0.0, 79.0)])
@pytest.mark.parametrize(("font_scale", "thickness"), [(0.4, 1), (1.0, 2)])
def test_a_label_at_the_border_lies_wholly_inside_the_image(centre, font_scale, thickness):
    width, height, pad = 100, 80, 60
    text = "37"
    org = overlay.label_origin(text, centre, font_scale=font_scale, thickness=thickness, size=(width, height))
    # Drawn on a larger canvas, so that what would fall outside the image is seen.
    canvas = np.zeros((height + 2 * pad, width + 2 * pad), np.uint8)
    cv2.putText(canvas, text, (org[0] + pad, org[1] + pad), overlay.FONT, font_scale, 255, thickness + 2,
                cv2.LINE_AA)
    ys, xs = np.nonzero(canvas)
    margin = overlay.LABEL_MARGIN
    assert xs.min() >= pad + margin and xs.max() <= pad + width - 1 - margin
    assert ys.min() >= pad + margin and ys.max() <= pad + height - 1 - margin


def test_only_the_labels_at_the_border_move(tmp_path, monkeypatch):
    # A grid whose first and last columns lie on the image's border.
    lattice = Lattice(origin_x=2.0, origin_y=30.0, pitch_x=45.0, pitch_y=45.0, angle_deg=0.0, rows=4, cols=6)
    drawn = draw_lattice_mask(lattice, width=230, height=180, radius=9)
    reg = register_mask(drawn.mask, rows=4, cols=6)
    source = np.zeros(drawn.mask.shape, np.uint8)
    moved = overlay.render_overview(reg, source)

    def centred(text, centre, *, font_scale, thickness, size):
        (width, height), _ = cv2.getTextSize(text, overlay.FONT, font_scale, thickness)
        return round(centre[0] - width / 2), round(centre[1] + height / 2)

    monkeypatch.setattr(overlay, "label_origin", centred)
    before = overlay.render_overview(reg, source)
    _, xs = np.nonzero(np.any(moved != before, axis=2))
    assert xs.size, "the labels of the marks on the border should have moved"
    near_border = (xs < reg.pitch_x) | (xs >= drawn.mask.shape[1] - reg.pitch_x)
    assert near_border.all()


# 4. Messages for a user with masks only, and for a mistyped group.

def test_a_missing_source_says_what_to_put_there(tmp_path):
    dataset = make_group(tmp_path / "ds", source=False)
    with pytest.raises(InputError) as caught:
        register_group(dataset, "g", rows=ROWS, cols=COLS)
    assert str(caught.value).startswith(
        f"the normalised source {source_path(dataset, 'g')} does not exist: put there an 8-bit grey TIFF of the "
        f"mask's size ({WIDTH} x {HEIGHT} px)")
    # The file it asks for is all it takes.
    write_tiff(source_path(dataset, "g"), np.zeros((HEIGHT, WIDTH), np.uint8))
    assert register_group(dataset, "g", rows=ROWS, cols=COLS).assigned == 29


def test_a_mistyped_group_is_named_with_the_groups_there_are(tmp_path):
    dataset = make_group(make_group(tmp_path / "ds", "a"), "b")
    result = run_cli(str(dataset), "nosuch", "b", "--rows", str(ROWS), "--cols", str(COLS))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: group nosuch: no group 'nosuch' in {dataset}; groups: a, b" in result.stderr
    assert "b: 29 marks numbered" in result.stdout


# 5. The log names the folder the overlay tiles end up in, not the staging folder.

def test_the_tiles_are_logged_in_their_final_folder(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(overlay, "OVERVIEW_MAX_SIDE", 64)
    dataset = make_group(tmp_path / "ds")
    with caplog.at_level(logging.INFO, logger="am.register"):
        register_group(dataset, "g", rows=ROWS, cols=COLS)
    tiles = dataset / "am_coords" / "g" / "overlay_tiles"
    assert tiles.is_dir()
    logged = [r.getMessage() for r in caplog.records if "tiles in" in r.getMessage()]
    assert logged and all(f"tiles in {tiles}" in message for message in logged), logged
    assert ".partial" not in caplog.text


# 6. A 1-bit mask is read as 0/255.

@pytest.mark.parametrize("writer", ["PIL", "tifffile"])
def test_a_1_bit_mask_is_registered(tmp_path, writer):
    dataset = make_group(tmp_path / "ds")
    path = mask_path(dataset, "g")
    marks = drawn_mask() > 0
    if writer == "PIL":
        Image.fromarray(marks).convert("1").save(path, format="TIFF")
    else:
        tifffile.imwrite(path, marks)
    assert tifffile.TiffFile(path).pages[0].bitspersample == 1
    assert register_group(dataset, "g", rows=ROWS, cols=COLS).assigned == 29
