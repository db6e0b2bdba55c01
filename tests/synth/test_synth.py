"""Generator invariants: the mask is exactly the drawn marks, ids are unique and in lattice order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from am.imageio import read_image
from am.synth.dataset import iter_samples, random_sample, write_dataset
from am.synth.lattice import Lattice
from am.synth.render import POLARITIES, POLARITY_MIX, SHAPES, Style, polarity_probabilities, random_style, render

REPO = Path(__file__).resolve().parents[2]


def _scene(seed: int, **style):
    rng = np.random.default_rng(seed)
    base = random_style(rng)
    style = Style(**{**base.__dict__, **style})
    lat = Lattice.centred(rows=6, cols=7, width=320, height=288, pitch_x=style.pitch, angle_deg=style.angle_deg)
    return render(lat, style, width=320, height=288, rng=rng)


@pytest.mark.parametrize("seed", range(6))
def test_mask_ids_and_lattice_order(seed: int) -> None:
    scene = _scene(seed, pitch=40.0, mark_radius=14.0, jitter=0.02, missing=0.15, angle_deg=7.0 * (seed - 3) / 3)
    assert scene.image.dtype == np.float32 and scene.image.min() >= 0 and scene.image.max() <= 1
    np.testing.assert_array_equal(scene.mask == 255, scene.ids > 0)
    assert set(np.unique(scene.mask)) <= {0, 255}
    present_ids = set(np.unique(scene.ids)) - {0}
    expected = {int(i) for i in scene.lattice.ids()[scene.present]}
    assert present_ids == expected
    assert 0 < len(present_ids) <= scene.lattice.rows * scene.lattice.cols
    # Each id sits at its own lattice node (marks are drawn around the node, within a fraction of the pitch).
    nodes = scene.lattice.nodes()
    labels = sorted(present_ids)
    centres = ndimage.center_of_mass(np.ones_like(scene.ids), scene.ids, labels)
    for mark_id, (cy, cx) in zip(labels, centres, strict=True):
        nx, ny = nodes[mark_id - 1]
        if 20 < nx < 300 and 20 < ny < 268:  # marks cut by the border have shifted centres
            assert np.hypot(cx - nx, cy - ny) < 0.5 * 40.0
        # One connected footprint per id, at most a few fragments for C shapes.
        _, count = ndimage.label(scene.ids == mark_id)
        assert count <= 3


def test_every_shape_draws_something() -> None:
    for shape in SHAPES:
        scene = _scene(1, shape=shape, pitch=40.0, mark_radius=14.0, missing=0.0, mixed_shapes=False)
        areas = np.bincount(scene.ids.ravel())[1:]
        assert (areas[areas > 0] > 20).all(), shape


def test_missing_marks_are_absent_from_truth() -> None:
    scene = _scene(2, missing=0.5, pitch=40.0, mark_radius=14.0)
    assert 0 < scene.present.sum() < scene.present.size
    absent = scene.lattice.ids()[~scene.present]
    assert not np.isin(scene.ids, absent).any()


def test_samples_are_reproducible_and_normalised() -> None:
    a = random_sample(np.random.default_rng([5, 1]), size=128)
    b = random_sample(np.random.default_rng([5, 1]), size=128)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.image.dtype == np.uint8 and a.image.shape == (128, 128)
    assert a.image.min() == 0 and a.image.max() == 255


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_write_dataset_layout(tmp_path: Path, bit_depth: int) -> None:
    root = tmp_path / "ds"
    paths = write_dataset(root, rows=6, cols=5, seed=3, groups=2, bit_depth=bit_depth, pitch=30)
    assert [p.relative_to(root).as_posix() for p in paths] == ["source/group01/image.tif", "source/group02/image.tif"]
    image = read_image(paths[0])
    assert image.dtype == (np.uint8 if bit_depth == 8 else np.uint16)
    ids = read_image(root / "truth" / "group01" / "ids.png")
    mask = read_image(root / "truth" / "group01" / "mask.png")
    assert ids.dtype == np.uint16 and ids.shape == image.shape == mask.shape
    np.testing.assert_array_equal(mask == 255, ids > 0)
    record = json.loads((root / "truth" / "group01" / "lattice.json").read_text())
    assert record["rows"] == 6 and record["cols"] == 5 and record["pitch_x"] == 30
    present = set(np.unique(ids)) - {0}
    assert present == set(range(1, 31)) - set(record["missing_ids"])


def test_uneven_rows_dataset_spaces_rows_as_asked_and_keeps_every_mark_inside(tmp_path: Path) -> None:
    from am.synth.__main__ import main as synth_main

    regular, uneven = tmp_path / "regular", tmp_path / "uneven"
    write_dataset(regular, rows=10, cols=6, seed=3, pitch=30)
    assert synth_main(["dataset", str(uneven), "--rows", "10", "--cols", "6", "--seed", "3", "--pitch", "30",
                       "--uneven-rows"]) == 0
    plain = json.loads((regular / "truth" / "group01" / "lattice.json").read_text())
    assert plain["row_across_px"] == [] and plain["row_along_px"] == []
    record = json.loads((uneven / "truth" / "group01" / "lattice.json").read_text())
    lat = Lattice(**{k: record[k] for k in ("rows", "cols", "pitch_x", "pitch_y", "angle_deg", "origin_x", "origin_y",
                                              "shear")},
                  row_across=tuple(record["row_across_px"]), row_along=tuple(record["row_along_px"]))
    gaps = np.diff(np.asarray(record["row_across_px"]) + np.arange(10) * lat.pitch_y)
    assert np.all(gaps >= 0.65 * lat.pitch_y - 1e-9) and np.all(gaps <= 1.3 * lat.pitch_y + 1e-9)
    assert np.ptp(gaps) > 0.2 * lat.pitch_y
    # The closest rows keep tissue between their marks, as on the real tile_b.
    assert gaps.min() >= 2.6 * record["style"]["mark_radius"] - 1e-6
    assert np.all(np.abs(record["row_along_px"]) <= 0.2 * lat.pitch_x)
    ids = read_image(uneven / "truth" / "group01" / "ids.png")
    assert ids.shape == (record["height"], record["width"])
    nodes = lat.nodes()
    assert nodes.min() > 0 and np.all(nodes.max(axis=0) < [record["width"], record["height"]])
    # Each mark is drawn around its own (moved) node.
    for mark_id in np.unique(ids[ids > 0])[::7]:
        ys, xs = np.nonzero(ids == mark_id)
        assert np.hypot(xs.mean() - nodes[mark_id - 1, 0], ys.mean() - nodes[mark_id - 1, 1]) < 0.5 * lat.pitch_x


def test_cli_refuses_to_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    cmd = [sys.executable, "-m", "am.synth", "dataset", str(root), "--rows", "4", "--cols", "4", "--seed", "1"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    before = tifffile.imread(root / "source" / "group01" / "image.tif")
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert second.returncode == 1 and "--force" in second.stderr
    forced = subprocess.run([*cmd, "--force"], cwd=REPO, capture_output=True, text=True, check=False)
    assert forced.returncode == 0
    np.testing.assert_array_equal(before, tifffile.imread(root / "source" / "group01" / "image.tif"))
    usage = subprocess.run([*cmd[:4], "--rows", "0", "--cols", "3"], cwd=REPO, capture_output=True, text=True,
                           check=False)
    assert usage.returncode == 2


def test_flat_marks_stand_out_from_their_surroundings() -> None:
    """A 'flat' mark (texture wiped away) must still differ from the tissue around it: a label
    nobody could draw from the image would only teach a model to guess."""
    import cv2

    contrasts = []
    for seed in range(400):
        sample = random_sample(np.random.default_rng([99, seed]), size=256)
        inside = sample.mask > 0
        if sample.style.polarity != "flat" or not inside.any():
            continue
        ring = cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~inside
        image = sample.image.astype(np.float64)
        contrasts.append((image[inside].mean() - image[ring].mean()) / image[ring].std())
    assert len(contrasts) >= 30
    assert min(contrasts) > 0.2, "a flat mark is as dark as the gaps of the tissue around it"
    assert np.median(contrasts) > 1.0


def _calm_marks(seed: int, polarity: str, **style):
    """A scene of ``polarity`` blob marks on calm tissue, and its marks clear of the image's edge as
    ``(id, pixels)``: close looks at one polarity, without distractors in the way."""
    scene = _scene(seed, polarity=polarity, shape="blob", pitch=50.0, missing=0.0, mixed_shapes=False, blur=0.3,
                   noise=0.0, speckle=0.1, contrast=0.4, illumination=0.0, bright_blobs=0.0, dark_holes=0.0,
                   dark_patches=0.0, debris=0.0, shadow=0.0, **style)
    height, width = scene.ids.shape
    marks = []
    for mark_id in sorted(set(np.unique(scene.ids)) - {0}):
        inside = scene.ids == mark_id
        ys, xs = np.nonzero(inside)
        if ys.min() >= 4 and xs.min() >= 4 and ys.max() <= height - 5 and xs.max() <= width - 5:
            marks.append((mark_id, inside))
    return scene, marks


def test_crater_marks_are_dark_with_a_light_plateau_and_drawn_only_when_asked() -> None:
    """Like crop2's marks: most of the crater darker than the tissue around it, one side a flat light
    plateau; and absent from the default mix, so that every seed keeps its images."""
    import cv2

    assert POLARITY_MIX["crater"] == 0
    assert all(random_style(np.random.default_rng(s)).polarity != "crater" for s in range(300))
    checked = 0
    for seed in range(3):
        scene, marks = _calm_marks(seed, "crater", mark_radius=18.0)
        for mark_id, inside in marks:
            ring = cv2.dilate(inside.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & (scene.ids == 0)
            values = scene.image[inside]
            dark, lit = np.quantile(values, 0.2), np.quantile(values, 0.95)
            assert dark < np.median(scene.image[ring]) - 0.05, mark_id
            assert lit > dark + 0.15, mark_id
            checked += 1
    assert checked >= 20


def test_outlined_marks_have_a_light_floor_inside_a_dark_wall_that_the_label_covers() -> None:
    """Like crop2's marks seen closely: a flat floor lighter than the tissue, ringed by a wall darker
    than it, and the mark's label reaching past the wall; absent from the default mix."""
    import cv2

    assert POLARITY_MIX["outlined"] == 0
    assert all(random_style(np.random.default_rng(s)).polarity != "outlined" for s in range(300))
    checked = 0
    for seed in range(3):
        scene, marks = _calm_marks(seed, "outlined", mark_radius=16.0, mark_texture=0.0)
        for mark_id, pixels in marks:
            inside = pixels.astype(np.uint8)
            depth = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            floor = scene.image[depth > 7]
            wall = scene.image[(depth > 0) & (depth <= 3)]
            ring = cv2.dilate(inside, np.ones((9, 9), np.uint8)).astype(bool) & (scene.ids == 0)
            tissue = np.median(scene.image[ring])
            assert np.median(floor) > tissue + 0.05, mark_id
            assert np.quantile(wall, 0.25) < tissue - 0.05, mark_id
            checked += 1
    assert checked >= 20


def test_visible_labels_grow_the_footprint_and_leave_the_image_alone() -> None:
    """The label convention changes the truth only, within the reach of the blurred edge, and never merges marks."""
    import cv2

    from am.synth.truth import label_reach, visible_ids

    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    square = np.ones((3, 3), np.uint8)
    for seed in range(4):
        style = random_style(np.random.default_rng(seed))
        style = Style(**{**style.__dict__, "pitch": 30.0, "mark_radius": 12.0, "missing": 0.1})
        lat = Lattice.centred(rows=6, cols=7, width=320, height=288, pitch_x=30.0, angle_deg=style.angle_deg)
        visible = render(lat, style, width=320, height=288, rng=np.random.default_rng(seed), labels="visible")
        plain = render(lat, style, width=320, height=288, rng=np.random.default_rng(seed), labels="footprint")
        np.testing.assert_array_equal(visible.image, plain.image)
        kept = plain.ids > 0
        np.testing.assert_array_equal(visible.ids[kept], plain.ids[kept])  # drawn pixels keep their id
        added = (visible.ids > 0) & ~kept
        assert added.any()
        gap = 4 if style.shape == "split" or style.mixed_shapes else 0
        side = 2 * int(np.ceil(label_reach(style) + 0.5)) + 1 + gap
        # Every added pixel lies within the reach of a drawn pixel of the same mark (a split mark's
        # gap, at most a fifth of its radius wide, is labelled too), and every pixel beside a drawn
        # mark is labelled where no other mark is near.
        for mark_id in np.unique(visible.ids[added]):
            own = (plain.ids == mark_id).astype(np.uint8)
            near = cv2.dilate(own, np.ones((side, side), np.uint8)) > 0
            assert (near | ~((visible.ids == mark_id) & added)).all()
            beside = (cv2.dilate(own, cross) > 0) & ~kept
            # Near another mark's pixels, drawn or labelled (the seam between abutting marks takes
            # a drawn pixel from the truth, see keep_apart).
            others = ((plain.ids > 0) & (plain.ids != mark_id)) | ((visible.ids > 0) & (visible.ids != mark_id))
            crowded = cv2.dilate(others.astype(np.uint8), np.ones((7, 7), np.uint8))
            assert (visible.ids[beside & (crowded == 0)] == mark_id).all()
        np.testing.assert_array_equal(visible.mask == 255, visible.ids > 0)
        assert set(np.unique(visible.ids)) == set(np.unique(plain.ids))
        # Growing never joins two marks that the drawing kept apart.
        for mark_id in np.unique(visible.ids[added]):
            others = (visible.ids > 0) & (visible.ids != mark_id)
            touching = cv2.dilate((plain.ids == mark_id).astype(np.uint8), square) > 0
            grown_touching = cv2.dilate((visible.ids == mark_id).astype(np.uint8), square) > 0
            assert not (grown_touching & others & ~touching).any()
        np.testing.assert_array_equal(visible_ids(np.zeros((4, 4), np.uint16), style), 0)


def test_visible_labels_follow_the_blur_without_steps() -> None:
    """A tenth of a pixel more blur moves the truth a little, not by a whole ring of pixels.

    The earlier convention (``"margin"``, kept for the shipped model's recorded training stages)
    rounds the reach up to whole pixels and grows every mark by a ring at a blur of 1.36 px.
    """
    from am.synth.truth import grow_ids, label_margin, visible_ids

    lat = Lattice.centred(rows=5, cols=5, width=200, height=200, pitch_x=40.0)
    style = Style(shape="c", pitch=40.0, mark_radius=14.0, missing=0.0, blur=0.0)
    drawn = render(lat, style, width=200, height=200, rng=np.random.default_rng(5), labels="footprint").ids
    areas = {blur: int((visible_ids(drawn, Style(blur=blur)) > 0).sum()) for blur in (0.0, 1.3, 1.4, 1.6)}
    assert areas[0.0] <= areas[1.3] <= areas[1.4] <= areas[1.6]
    assert areas[1.4] - areas[1.3] < 0.02 * areas[1.3]
    margins = {blur: int((grow_ids(drawn, label_margin(Style(blur=blur))) > 0).sum()) for blur in (1.3, 1.4)}
    assert margins[1.4] - margins[1.3] > 0.1 * margins[1.3]
    # A mark's concave side, which the blur fills in the image, is labelled as far as it shows.
    assert areas[1.6] > areas[0.0]


def test_label_margin_follows_the_blur() -> None:
    from am.synth.truth import grow_ids, label_margin

    assert label_margin(Style(blur=0.0)) == 1
    assert label_margin(Style(blur=0.9)) == 1
    assert label_margin(Style(blur=1.6)) == 2
    style = Style(blur=1.5, missing=0.0)
    lat = Lattice.centred(rows=3, cols=3, width=96, height=96, pitch_x=30.0)
    margin = render(lat, style, width=96, height=96, rng=np.random.default_rng(2), labels="margin")
    drawn = render(lat, style, width=96, height=96, rng=np.random.default_rng(2), labels="footprint")
    np.testing.assert_array_equal(margin.ids, grow_ids(drawn.ids, 2))
    assert grow_ids(np.zeros((4, 4), np.uint16), 0).sum() == 0
    with pytest.raises(ValueError, match="labels"):
        render(Lattice.centred(rows=2, cols=2, width=64, height=64, pitch_x=20.0), Style(), width=64, height=64,
               rng=np.random.default_rng(0), labels="outline")


def test_a_split_mark_is_one_mark_in_the_truth() -> None:
    """A split mark is drawn as two lobes with tissue between them, and labelled as one whole mark."""
    from scipy import ndimage

    style = Style(shape="split", pitch=48.0, mark_radius=18.0, missing=0.0, blur=0.0, jitter=0.0)
    lat = Lattice.centred(rows=4, cols=4, width=192, height=192, pitch_x=48.0)
    visible = render(lat, style, width=192, height=192, rng=np.random.default_rng(3), labels="visible")
    drawn = render(lat, style, width=192, height=192, rng=np.random.default_rng(3), labels="footprint")
    np.testing.assert_array_equal(visible.image, drawn.image)
    two_lobes = one_mark = 0
    for mark_id in set(np.unique(drawn.ids)) - {0}:
        two_lobes += ndimage.label(drawn.ids == mark_id)[1] == 2
        one_mark += ndimage.label(visible.ids == mark_id)[1] == 1
    assert two_lobes >= 12 and one_mark == len(set(np.unique(visible.ids)) - {0})
    # The gap is painted as tissue: darker than the bright lobes around it.
    gap = (visible.ids > 0) & (drawn.ids == 0) & _deep_inside(visible.ids > 0)
    assert gap.any()
    assert visible.image[gap].mean() < visible.image[drawn.ids > 0].mean()


def test_abutting_marks_are_separate_objects_in_the_truth() -> None:
    """Marks drawn edge to edge (stacked "C" marks, close crescents) stay one object each in the
    0/255 mask, so object counts and F1 on synthetic data count marks, not clusters of them."""
    import cv2

    from am.synth.truth import keep_apart

    ids = np.zeros((8, 12), np.uint16)
    ids[2:6, 1:5] = 3
    ids[2:6, 5:8] = 2  # shares an edge with mark 3
    ids[6:8, 8:11] = 5  # touches mark 2 at one corner only
    apart = keep_apart(ids)
    count, labels = cv2.connectedComponents((apart > 0).astype(np.uint8), connectivity=8)
    assert count - 1 == 3
    assert (apart[ids == 2] == 2).all()  # the smallest id keeps every pixel
    assert (apart[2:6, 4] == 0).all() and (apart[2:6, 1:4] == 3).all()  # a 1 px seam, nothing more
    assert apart[6, 8] == 0 and (apart == 5).sum() == (ids == 5).sum() - 1
    np.testing.assert_array_equal(keep_apart(np.zeros((3, 3), np.uint16)), 0)
    # Rendered scenes at a pitch where marks abut (34 components held two or more marks before the
    # seam): no 8-connected component of the mask holds two marks.
    for seed in range(6):
        scene = _scene(seed, pitch=22.0, mark_radius=11.5, jitter=0.05, missing=0.0)
        count, labels = cv2.connectedComponents(scene.mask, connectivity=8)
        for component in range(1, count):
            assert len(np.unique(scene.ids[labels == component])) == 1


def _deep_inside(mask: np.ndarray) -> np.ndarray:
    """Mask pixels at least 3 px inside the mask: away from the label's grown rim."""
    import cv2

    return cv2.erode(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0


def test_polarity_mix_changes_the_polarities_and_nothing_else() -> None:
    from dataclasses import replace

    plain = [random_style(np.random.default_rng(s)) for s in range(200)]
    even = [random_style(np.random.default_rng(s), polarity_mix=dict.fromkeys(POLARITIES, 1.0)) for s in range(200)]
    rim_only = [random_style(np.random.default_rng(s), polarity_mix={"rim": 3.0}) for s in range(20)]
    assert [s.polarity for s in plain] == [
        s.polarity for s in (random_style(np.random.default_rng(i), polarity_mix=POLARITY_MIX) for i in range(200))]
    assert {s.polarity for s in rim_only} == {"rim"}
    for a, b in zip(plain, even, strict=True):
        assert replace(b, polarity=a.polarity) == a
    # Bright is drawn 40 % of the time by default; an even mix draws it one time in len(POLARITIES).
    bright_plain = sum(s.polarity == "bright" for s in plain)
    bright_even = sum(s.polarity == "bright" for s in even)
    assert bright_even < bright_plain and 20 <= bright_even <= 60 and 60 <= bright_plain <= 100


@pytest.mark.parametrize("mix", [{}, {"purple": 1.0}, {"bright": -1.0, "rim": 2.0}, {"bright": 0.0},
                                 {"bright": float("nan")}])
def test_polarity_mix_rejects_unknown_names_and_bad_weights(mix: dict) -> None:
    with pytest.raises(ValueError, match="polarit"):
        polarity_probabilities(mix)
    with pytest.raises(ValueError, match="polarit"):
        random_style(np.random.default_rng(0), polarity_mix=mix)


def test_blob_rate_multiplies_the_bright_blobs_and_nothing_else() -> None:
    from dataclasses import replace

    styles = [(random_style(np.random.default_rng(s)), random_style(np.random.default_rng(s), blob_rate=4.0))
              for s in range(12)]
    assert any(plain.bright_blobs > 0 for plain, _ in styles)
    for plain, more in styles:
        assert more.bright_blobs == pytest.approx(4.0 * plain.bright_blobs)
        assert replace(more, bright_blobs=plain.bright_blobs) == plain


def test_rendering_on_worker_processes_gives_the_same_samples_in_order():
    """A GPU machine renders training images on many processes; the data must not depend on how many."""
    serial = list(iter_samples(41, 5, size=128, polarity_mix={"rim": 1, "grey": 1}))
    parallel = list(iter_samples(41, 5, size=128, polarity_mix={"rim": 1, "grey": 1}, workers=2))
    assert len(parallel) == 5
    for one, other in zip(serial, parallel, strict=True):
        assert one.style == other.style and one.style.polarity in ("rim", "grey")
        assert np.array_equal(one.image, other.image) and np.array_equal(one.mask, other.mask)


def test_uneven_rows_move_whole_rows_and_node_agrees_with_nodes() -> None:
    regular = Lattice.centred(rows=5, cols=4, width=300, height=300, pitch_x=30, angle_deg=3, shear=0.02)
    uneven = regular.with_uneven_rows(np.random.default_rng(1))
    moved = (uneven.nodes() - regular.nodes()).reshape(5, 4, 2)
    assert np.allclose(moved, moved[:, :1])  # a row moves as one
    theta = np.radians(regular.angle_deg)
    across = moved[:, 0] @ np.array([-np.sin(theta), np.cos(theta)])
    assert across[0] == pytest.approx(0) and np.ptp(across) > 0  # row 0 keeps its place across the rows
    assert all(np.allclose(uneven.node(r, c), uneven.nodes()[r * 4 + c]) for r in range(5) for c in range(4))
