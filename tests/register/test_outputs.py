"""The files of am_coords/<group>/: formats a reader can rely on, written atomically."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from am.errors import InputError
from am.register import overlay, register_mask, write_outputs
from am.register.testing import draw_lattice_mask
from am.synth.lattice import Lattice

JSON_KEYS = {
    "rows", "cols", "estimated_shape", "image_width", "image_height", "angle_deg", "pitch_x", "pitch_y",
    "origin_x", "origin_y", "shear", "residual_px", "tolerance_px", "marks_found", "marks_assigned",
    "marks_off_lattice", "marks_duplicate", "fragments_merged", "empty_nodes", "empty_node_ids", "warnings",
    "row_spacing", "row_positions_px", "row_shifts_px",
}


@pytest.fixture(scope="module")
def registered():
    lattice = Lattice.centred(rows=6, cols=7, width=300, height=260, pitch_x=36, angle_deg=-3)
    drawn = draw_lattice_mask(lattice, width=300, height=260, radius=9, shape="crescent", missing=[3, 40], debris=6)
    source = np.where(drawn.mask > 0, 220, 50).astype(np.uint8)
    return drawn, register_mask(drawn.mask, rows=6, cols=7), source


def test_id_image_round_trips_as_uint16_png(tmp_path, registered):
    drawn, reg, source = registered
    write_outputs(tmp_path, reg, source=source)
    ids = cv2.imread(str(tmp_path / "am_coordinates.png"), cv2.IMREAD_UNCHANGED)
    assert ids.dtype == np.uint16 and ids.shape == drawn.mask.shape
    np.testing.assert_array_equal(ids, reg.ids)
    assert sorted(set(np.unique(ids).tolist()) - {0}) == sorted(drawn.present.tolist())


def test_ids_above_255_survive_the_png(tmp_path):
    lattice = Lattice.centred(rows=20, cols=20, width=520, height=520, pitch_x=24, angle_deg=1)
    drawn = draw_lattice_mask(lattice, width=520, height=520, radius=6)
    reg = register_mask(drawn.mask, rows=20, cols=20)
    write_outputs(tmp_path, reg, source=np.zeros_like(drawn.mask))
    ids = cv2.imread(str(tmp_path / "am_coordinates.png"), cv2.IMREAD_UNCHANGED)
    assert ids.max() == 400
    np.testing.assert_array_equal(ids, reg.ids)


def test_csv_columns_and_rows(tmp_path, registered):
    _, reg, source = registered
    write_outputs(tmp_path, reg, source=source)
    with open(tmp_path / "am_coordinates.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["id", "row", "col", "x", "y", "area_px"]
        rows = list(reader)
    assert len(rows) == reg.assigned == 40
    first = rows[0]
    assert (int(first["id"]), int(first["row"]), int(first["col"])) == (1, 0, 0)
    for rec in rows:
        assert int(rec["id"]) == int(rec["row"]) * 7 + int(rec["col"]) + 1
        x, y = float(rec["x"]), float(rec["y"])
        assert reg.ids[round(y), round(x)] == int(rec["id"])
        assert int(rec["area_px"]) == np.count_nonzero(reg.ids == int(rec["id"]))


def test_json_keys_and_values(tmp_path, registered):
    _, reg, source = registered
    write_outputs(tmp_path, reg, source=source)
    data = json.loads((tmp_path / "registration.json").read_text())
    assert set(data) == JSON_KEYS
    assert (data["rows"], data["cols"], data["estimated_shape"]) == (6, 7, False)
    assert data["empty_node_ids"] == [3, 40]
    assert data["marks_assigned"] == 40
    assert data["marks_off_lattice"] >= 6
    assert data["angle_deg"] == pytest.approx(-3, abs=0.1)
    assert isinstance(data["warnings"], list)
    assert (data["row_spacing"], data["row_positions_px"], data["row_shifts_px"]) == ("regular", None, None)


def test_overlay_is_colour_image_of_input_size_with_outlines(tmp_path, registered):
    drawn, reg, source = registered
    write_outputs(tmp_path, reg, source=source)
    image = cv2.imread(str(tmp_path / "overlay.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (*drawn.mask.shape, 3)
    outline = np.all(image == overlay.OUTLINE_BGR, axis=2)
    assert outline.sum() > 40 * 20
    assert np.all(image == overlay.TEXT_BGR, axis=2).any()
    assert not (tmp_path / "overlay_tiles").exists()


def test_no_temporary_files_are_left(tmp_path, registered):
    _, reg, source = registered
    write_outputs(tmp_path / "out", reg, source=source)
    write_outputs(tmp_path / "out", reg, source=source)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "am_coordinates.csv", "am_coordinates.png", "overlay.png", "registration.json",
    ]


def test_large_images_get_an_overview_and_full_resolution_tiles(tmp_path, monkeypatch):
    lattice = Lattice.centred(rows=12, cols=12, width=600, height=560, pitch_x=45, angle_deg=2)
    drawn = draw_lattice_mask(lattice, width=600, height=560, radius=11)
    reg = register_mask(drawn.mask, rows=12, cols=12)
    monkeypatch.setattr(overlay, "OVERVIEW_MAX_SIDE", 150)
    monkeypatch.setattr(overlay, "TILE_SIDE", 256)
    write_outputs(tmp_path, reg, source=np.zeros_like(drawn.mask))
    assert cv2.imread(str(tmp_path / "overlay.png")).shape[:2] == (140, 150)
    tiles = sorted(p.name for p in (tmp_path / "overlay_tiles").iterdir())
    assert tiles == [f"overlay_y{y:06d}_x{x:06d}.png" for y in (0, 256, 512) for x in (0, 256, 512)]
    assert cv2.imread(str(tmp_path / "overlay_tiles" / tiles[-1])).shape[:2] == (560 - 512, 600 - 512)
    # A later run that needs no tiles removes the stale ones.
    monkeypatch.setattr(overlay, "OVERVIEW_MAX_SIDE", 4096)
    write_outputs(tmp_path, reg, source=np.zeros_like(drawn.mask))
    assert not (tmp_path / "overlay_tiles").exists()


def test_dense_grids_get_enlarged_tiles_with_readable_ids(tmp_path, monkeypatch):
    # 40 x 40 marks 12 px apart on a 500 px image: at full resolution a 4-digit id fits a cell only
    # 2-3 px high. The overview labels landmarks, and tiles enlarged until every id is readable
    # carry them all.
    lattice = Lattice.centred(rows=40, cols=40, width=500, height=500, pitch_x=12, angle_deg=1)
    drawn = draw_lattice_mask(lattice, width=500, height=500, radius=3.5)
    reg = register_mask(drawn.mask, rows=40, cols=40)
    assert overlay.overview_scale(reg) == 1.0 and overlay.needs_tiles(reg)
    zoom = overlay.tile_zoom(reg)
    assert zoom > 1
    assert overlay._text_height(overlay._font_scale(reg, float(zoom))) >= overlay.MIN_TEXT_PX
    assert overlay._text_height(overlay._font_scale(reg, zoom - 1.0)) < overlay.MIN_TEXT_PX
    assert overlay.landmark_step(reg) > 1
    monkeypatch.setattr(overlay, "TILE_SIDE", 512)
    write_outputs(tmp_path, reg, source=np.zeros_like(drawn.mask))
    side = 512 // zoom
    starts = range(0, 500, side)
    tiles = sorted(p.name for p in (tmp_path / "overlay_tiles").iterdir())
    assert tiles == [f"overlay_y{y:06d}_x{x:06d}.png" for y in starts for x in starts]
    first = cv2.imread(str(tmp_path / "overlay_tiles" / tiles[0]))
    assert first.shape[:2] == (side * zoom, side * zoom)
    assert np.all(first == overlay.TEXT_BGR, axis=2).any()


def test_source_of_another_size_is_refused(tmp_path, registered):
    _, reg, _ = registered
    with pytest.raises(InputError, match="use source_norm of the same group"):
        write_outputs(tmp_path, reg, source=np.zeros((10, 10), np.uint8))
    assert not any(tmp_path.iterdir())


def _dataset_with_a_mask(root, registered_mask: np.ndarray):
    import tifffile

    from am.register.dataset import mask_path, source_path

    for path, image in ((mask_path(root, "g"), registered_mask), (source_path(root, "g"), registered_mask // 2)):
        path.parent.mkdir(parents=True)
        tifffile.imwrite(path, image)
    return root


@pytest.mark.parametrize("fault", [KeyboardInterrupt, OSError])
def test_a_registration_stopped_while_writing_leaves_all_files_or_none(tmp_path, monkeypatch, fault):
    """Ctrl-C or a full disk while the overlay is drawn: no folder with ids that looks finished."""
    from am.register.dataset import output_dir, register_group

    lattice = Lattice.centred(rows=6, cols=7, width=300, height=260, pitch_x=38, angle_deg=2)
    mask = (draw_lattice_mask(lattice, width=300, height=260, radius=9).mask > 0).astype(np.uint8) * 255
    dataset = _dataset_with_a_mask(tmp_path / "ds", mask)
    register_group(dataset, "g", rows=6, cols=7)
    finished = sorted(p.name for p in output_dir(dataset, "g").iterdir())
    assert {"am_coordinates.csv", "am_coordinates.png", "overlay.png", "registration.json"} <= set(finished)
    earlier = {p.name: p.read_bytes() for p in output_dir(dataset, "g").iterdir() if p.is_file()}

    def interrupted(*args, **kwargs):
        raise fault(28, "No space left on device") if fault is OSError else fault()

    monkeypatch.setattr(overlay, "render_overview", interrupted)
    with pytest.raises((fault, InputError)):
        register_group(dataset, "g", rows=6, cols=7)
    # The earlier registration stays whole (it matches its own registration.json); no half of the new one stays.
    assert {p.name: p.read_bytes() for p in output_dir(dataset, "g").iterdir() if p.is_file()} == earlier
    assert sorted(p.name for p in (dataset / "am_coords").iterdir()) == ["g"], "nothing staged is left"

    monkeypatch.undo()
    register_group(dataset, "g", rows=6, cols=7)
    assert sorted(p.name for p in output_dir(dataset, "g").iterdir()) == finished
