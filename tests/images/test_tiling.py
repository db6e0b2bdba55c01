"""Tile planning, splitting and stitching: properties over random sizes, plan files, and a real image."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from am.errors import InputError, StitchError
from am.imageio import read_image
from am.tiling import Stitcher, Tile, TilePlan, plan_tiles, read_tile, split
from tests.real_samples import real_sample


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, int, int]:
    tile_size = draw(st.sampled_from([1, 2, 7, 16, 32, 33, 64, 128]))
    overlap = draw(st.integers(0, tile_size - 1))
    height = draw(st.integers(1, 4 * tile_size + 5))
    width = draw(st.integers(1, 4 * tile_size + 5))
    return height, width, tile_size, overlap


BOUNDED = settings(max_examples=80, deadline=None)


@BOUNDED
@given(layouts())
def test_split_then_stitch_is_identity(layout: tuple[int, int, int, int]) -> None:
    height, width, tile_size, overlap = layout
    plan = plan_tiles(height, width, tile_size=tile_size, overlap=overlap)
    image = np.random.default_rng(height * 1000 + width).integers(1, 256, (height, width), dtype=np.uint8)
    stitcher = Stitcher(plan)
    for tile, pixels in split(image, plan):
        assert pixels.shape == (tile_size, tile_size) and pixels.flags.c_contiguous
        stitcher.add(tile.index, pixels)
    assert stitcher.is_complete and stitcher.missing() == []
    np.testing.assert_array_equal(stitcher.finalize(), image)


@BOUNDED
@given(layouts())
def test_own_regions_partition_the_image(layout: tuple[int, int, int, int]) -> None:
    height, width, tile_size, overlap = layout
    plan = plan_tiles(height, width, tile_size=tile_size, overlap=overlap)
    cover = np.zeros((height, width), np.int32)
    for tile in plan.tiles:
        cover[tile.own_slices] += 1
    assert (cover == 1).all()
    assert len(plan) == plan.rows * plan.cols
    assert [t.index for t in plan.tiles] == list(range(len(plan)))


@BOUNDED
@given(layouts())
def test_windows_lie_inside_the_image_and_end_at_the_edge(layout: tuple[int, int, int, int]) -> None:
    height, width, tile_size, overlap = layout
    plan = plan_tiles(height, width, tile_size=tile_size, overlap=overlap)
    for length, starts in ((height, sorted({t.y for t in plan.tiles})), (width, sorted({t.x for t in plan.tiles}))):
        if length < tile_size:
            assert starts == [0], "an axis shorter than a tile gets one padded tile"
            continue
        assert starts[0] == 0
        assert starts[-1] + tile_size == length, "the last tile must end exactly at the image edge"
        assert all(s >= 0 and s + tile_size <= length for s in starts)
        steps = np.diff(starts)
        assert (steps[:-1] == tile_size - overlap).all(), "all but the last step are the stride"
        assert (steps >= 1).all() and (steps <= tile_size - overlap).all()
    for tile in plan.tiles:
        assert tile.y <= tile.own_y0 < tile.own_y1 <= tile.y + tile_size
        assert tile.x <= tile.own_x0 < tile.own_x1 <= tile.x + tile_size


@BOUNDED
@given(layouts())
def test_overlaps_are_cut_at_their_midpoints(layout: tuple[int, int, int, int]) -> None:
    """Every owned pixel keeps at least floor(overlap/2) px of context towards any neighbouring tile."""
    height, width, tile_size, overlap = layout
    plan = plan_tiles(height, width, tile_size=tile_size, overlap=overlap)
    margin = overlap // 2
    for tile in plan.tiles:
        if tile.own_y0 > 0:
            assert tile.own_y0 - tile.y >= margin
        if tile.own_y1 < height:
            assert tile.y + tile_size - tile.own_y1 >= margin
        if tile.own_x0 > 0:
            assert tile.own_x0 - tile.x >= margin
        if tile.own_x1 < width:
            assert tile.x + tile_size - tile.own_x1 >= margin


@BOUNDED
@given(layouts())
def test_each_pixel_is_owned_by_the_tile_where_it_is_farthest_from_the_edge(layout: tuple[int, int, int, int]) -> None:
    height, width, tile_size, overlap = layout
    plan = plan_tiles(height, width, tile_size=tile_size, overlap=overlap)

    def depth(pos: int, start: int) -> int:
        return min(pos - start, start + tile_size - 1 - pos)

    for tile in plan.tiles:
        for axis_pos, own, start_of in (
            (range(tile.own_y0, tile.own_y1), tile.y, lambda t: t.y),
            (range(tile.own_x0, tile.own_x1), tile.x, lambda t: t.x),
        ):
            starts = {start_of(t) for t in plan.tiles}
            for pos in axis_pos:
                covering = [s for s in starts if s <= pos < s + tile_size]
                if covering:
                    assert depth(pos, own) >= max(depth(pos, s) for s in covering)


@BOUNDED
@given(layouts())
def test_plan_json_round_trip(layout: tuple[int, int, int, int]) -> None:
    height, width, tile_size, overlap = layout
    plan = plan_tiles(height, width, tile_size=tile_size, overlap=overlap)
    back = TilePlan.from_json(plan.to_json())
    assert back == plan
    assert (back.rows, back.cols) == (plan.rows, plan.cols)


def test_plan_is_rectangular_per_axis() -> None:
    plan = plan_tiles(1000, 3000, tile_size=512, overlap=128)
    assert (plan.rows, plan.cols) == (3, 8)
    assert sorted({t.y for t in plan.tiles}) == [0, 384, 488]
    assert plan.tiles[-1].own_slices == (slice(692, 1000), slice(plan.tiles[-1].own_x0, 3000))


def test_single_padded_tile_for_a_small_image() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    plan = plan_tiles(3, 4, tile_size=8, overlap=2)
    assert len(plan) == 1
    pixels = read_tile(image, plan.tiles[0], plan)
    assert pixels.shape == (8, 8)
    np.testing.assert_array_equal(pixels[:3, :4], image)
    np.testing.assert_array_equal(pixels[3], image[1, [0, 1, 2, 3, 2, 1, 0, 1]])  # reflect, edge not repeated


def test_one_pixel_image() -> None:
    plan = plan_tiles(1, 1, tile_size=4, overlap=1)
    pixels = read_tile(np.array([[9]], np.uint8), plan.tiles[0], plan)
    np.testing.assert_array_equal(pixels, np.full((4, 4), 9, np.uint8))


def test_read_tile_copies_and_carries_colour() -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    plan = plan_tiles(40, 40, tile_size=16, overlap=4)
    pixels = read_tile(image, plan.tiles[5], plan)
    assert pixels.shape == (16, 16, 3)
    pixels[:] = 1
    assert not image.any()


def test_read_tile_refuses_an_image_of_another_size() -> None:
    plan = plan_tiles(40, 40, tile_size=16, overlap=4)
    with pytest.raises(InputError, match=r"\(41, 40\) does not match"):
        read_tile(np.zeros((41, 40), np.uint8), plan.tiles[0], plan)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 10, 8, 2), "no pixels"),
        ((10, -1, 8, 2), "no pixels"),
        ((10, 10, 8, 8), "less than tile_size"),
        ((10, 10, 8, -1), "at least 0"),
        ((10, 10, 0, 0), "at least 1"),
        ((10.0, 10, 8, 2), "integer"),
        ((10, 10, True, 0), "integer"),
    ],
)
def test_plan_arguments_are_validated(args: tuple, match: str) -> None:
    height, width, tile_size, overlap = args
    with pytest.raises(InputError, match=match):
        plan_tiles(height, width, tile_size=tile_size, overlap=overlap)


def test_plan_save_and_load(tmp_path: Path) -> None:
    plan = plan_tiles(700, 900, tile_size=256, overlap=64)
    path = tmp_path / "tiles" / "g1" / "meta.json"
    plan.save(path)
    assert TilePlan.load(path) == plan
    assert [p.name for p in path.parent.iterdir()] == ["meta.json"]
    assert json.loads(path.read_text())["tiles"][1] == {"index": 1, "y": 0, "x": 192, "own": [0, 224, 224, 416]}


def _mutated(plan: TilePlan, change) -> str:
    data = json.loads(plan.to_json())
    change(data)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.pop("height"), "height"),
        (lambda d: d.update(rows=9), "rows x cols"),
        (lambda d: d["tiles"].pop(), "grid"),
        (lambda d: d["tiles"][0].update(own=[0, 1, 2]), "4-integer"),
        (lambda d: d["tiles"][0].update(y="0"), "integer index"),
        (lambda d: d["tiles"][3]["own"].__setitem__(0, 5), "unlike the other tiles"),
        (lambda d: [t["own"].__setitem__(1, t["own"][1] + 1) for t in d["tiles"][:5]], "gap or overlap"),
        (lambda d: [t.__setitem__("x", t["x"] + 100) for t in d["tiles"] if t["index"] % 5 == 4], "leave the image"),
        (lambda d: d["tiles"].reverse(), "row-major"),
    ],
)
def test_malformed_plans_are_refused(tmp_path: Path, change, match: str) -> None:
    plan = plan_tiles(700, 900, tile_size=256, overlap=64)
    path = tmp_path / "meta.json"
    path.write_text(_mutated(plan, change))
    with pytest.raises(InputError, match=match) as info:
        TilePlan.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_missing_and_non_json(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        TilePlan.load(tmp_path / "meta.json")
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        TilePlan.load(tmp_path / "meta.json")


def test_stitcher_names_missing_tiles() -> None:
    plan = plan_tiles(100, 100, tile_size=32, overlap=8)
    stitcher = Stitcher(plan)
    for tile, pixels in split(np.zeros((100, 100), np.uint8), plan):
        if tile.index not in (3, 7):
            stitcher.add(tile.index, pixels)
    assert stitcher.missing() == [3, 7]
    assert not stitcher.is_complete
    with pytest.raises(StitchError, match=r"2 of 16 tile\(s\) missing: 3, 7"):
        stitcher.finalize()


def test_stitcher_accepts_identical_duplicates_and_refuses_conflicts() -> None:
    plan = plan_tiles(64, 64, tile_size=32, overlap=8)
    stitcher = Stitcher(plan)
    tile = np.full((32, 32), 255, np.uint8)
    stitcher.add(0, tile)
    stitcher.add(0, tile.copy())
    outside_own = tile.copy()
    outside_own[-1, -1] = 0  # outside tile 0's own region: not a conflict
    stitcher.add(0, outside_own)
    conflicting = tile.copy()
    conflicting[0, 0] = 0
    with pytest.raises(StitchError, match="tile 0 was delivered twice with different content"):
        stitcher.add(0, conflicting)


@pytest.mark.parametrize(
    ("index", "pixels", "match"),
    [
        (9, np.zeros((32, 32), np.uint8), r"not in the plan \(0\.\.8\)"),
        (-1, np.zeros((32, 32), np.uint8), "not in the plan"),
        (0, np.zeros((32, 31), np.uint8), r"shape \(32, 31\)"),
        (0, np.zeros((32, 32), np.float32), "float32"),
        (0, np.zeros((32, 32), np.uint16), "uint16"),
    ],
)
def test_stitcher_refuses_bad_tiles(index: int, pixels: np.ndarray, match: str) -> None:
    stitcher = Stitcher(plan_tiles(64, 64, tile_size=32, overlap=8))
    with pytest.raises(StitchError, match=match):
        stitcher.add(index, pixels)


def test_stitcher_is_closed_after_finalize() -> None:
    plan = plan_tiles(20, 20, tile_size=32, overlap=8)
    stitcher = Stitcher(plan)
    stitcher.add(0, np.ones((32, 32), np.uint8))
    out = stitcher.finalize()
    assert out.shape == (20, 20) and (out == 1).all()
    with pytest.raises(StitchError, match="after the image was finalised"):
        stitcher.add(0, np.ones((32, 32), np.uint8))


def test_stitcher_from_many_threads() -> None:
    image = np.random.default_rng(3).integers(0, 256, (300, 260), dtype=np.uint8)
    plan = plan_tiles(300, 260, tile_size=64, overlap=16)
    stitcher = Stitcher(plan)
    tiles = list(split(image, plan))
    threads = [
        threading.Thread(target=lambda part=tiles[i::4]: [stitcher.add(t.index, p) for t, p in part])
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    np.testing.assert_array_equal(stitcher.finalize(), image)


def test_tile_geometry_helpers() -> None:
    tile = Tile(index=0, y=10, x=20, own_y0=12, own_y1=30, own_x0=20, own_x1=25)
    assert tile.own_shape == (18, 5)
    assert tile.own_in_tile == (slice(2, 20), slice(0, 5))


def test_real_image_split_and_stitch() -> None:
    image = read_image(real_sample("tile_b_512.png"))
    plan = plan_tiles(*image.shape[:2], tile_size=128, overlap=32)
    assert (plan.rows, plan.cols) == (5, 5)
    stitcher = Stitcher(plan, dtype=image.dtype)
    for tile, pixels in split(image, plan):
        stitcher.add(tile.index, pixels)
    np.testing.assert_array_equal(stitcher.finalize(), image)
