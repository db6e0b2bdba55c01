"""Cutting touching marks apart: hand-made probability maps with known answers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.segmentation import watershed

from am.errors import CheckpointError, InputError
from am.model.checkpoint import ModelMeta
from am.model.separate import flood_apart, separate_touching

DATA = Path(__file__).parent / "data"
META = ModelMeta(encoder="resnet18", threshold=0.5, seed_threshold=0.9)


def blobs(centres: list[tuple[float, float]], *, sigma: float, shape: tuple[int, int] = (80, 120)) -> np.ndarray:
    """Probabilities of Gaussian marks: the maximum over marks, 1.0 at each centre."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    proba = np.zeros(shape, dtype=np.float32)
    for cy, cx in centres:
        proba = np.maximum(proba, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
    return proba


def components(mask: np.ndarray) -> int:
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def test_two_touching_marks_become_two_with_a_one_pixel_cut() -> None:
    proba = blobs([(40, 45), (40, 75)], sigma=14)  # joined at 0.5 (the saddle is at 0.56), cores of 0.9 apart
    plain = proba >= 0.5
    assert components(plain) == 1
    cut = separate_touching(proba, threshold=0.5, seed_threshold=0.9)
    assert components(cut) == 2
    assert not (cut & ~plain).any(), "separation never adds a pixel"
    removed = np.argwhere(plain & ~cut)
    assert len(removed) <= plain[:, 60].sum() + 2, "only the line where the marks meet is removed"
    assert set(removed[:, 1]) <= {59, 60, 61}, "the line runs along the saddle between the marks"


def test_a_lone_mark_and_marks_that_do_not_touch_are_left_exactly_as_thresholded() -> None:
    proba = blobs([(40, 30), (40, 90)], sigma=8)  # apart at 0.5
    assert np.array_equal(separate_touching(proba, threshold=0.5, seed_threshold=0.9), proba >= 0.5)
    one = blobs([(40, 60)], sigma=14)
    assert np.array_equal(separate_touching(one, threshold=0.5, seed_threshold=0.9), one >= 0.5)


def test_cores_below_the_minimum_size_do_not_split_a_mark() -> None:
    proba = blobs([(40, 45), (40, 75)], sigma=14)
    core_px = int((proba >= 0.9).sum() // 2)  # each core's area
    plain = proba >= 0.5
    assert components(separate_touching(proba, threshold=0.5, seed_threshold=0.9, min_seed_px=core_px + 1)) == 1
    assert components(separate_touching(proba, threshold=0.5, seed_threshold=0.9, min_seed_px=core_px)) == 2
    assert np.array_equal(separate_touching(proba, threshold=0.5, seed_threshold=0.9, min_seed_px=core_px + 1), plain)


def test_two_marks_split_inside_a_crowd_leave_the_other_components_alone() -> None:
    proba = blobs([(25, 30), (25, 60), (65, 105)], sigma=14, shape=(100, 140))
    lone = blobs([(65, 105)], sigma=14, shape=(100, 140)) >= 0.5
    cut = separate_touching(proba, threshold=0.5, seed_threshold=0.9)
    assert components(cut) == 3
    assert np.array_equal(cut & lone, lone)


def test_bad_levels_and_shapes_are_refused() -> None:
    proba = np.zeros((8, 8), dtype=np.float32)
    with pytest.raises(InputError, match="seed_threshold 0.4 must lie between threshold 0.5 and 1"):
        separate_touching(proba, threshold=0.5, seed_threshold=0.4)
    with pytest.raises(InputError, match="2-D"):
        separate_touching(np.zeros((2, 8, 8), dtype=np.float32), threshold=0.5, seed_threshold=0.9)
    with pytest.raises(CheckpointError, match="seed_threshold 0.5 must lie between threshold 0.5 and 1"):
        ModelMeta(encoder="resnet18", threshold=0.5, seed_threshold=0.5)
    with pytest.raises(CheckpointError, match="seed_threshold"):
        ModelMeta(encoder="resnet18", seed_threshold=1.0)
    with pytest.raises(CheckpointError, match="min_mark_px -1 must be a whole number"):
        ModelMeta(encoder="resnet18", min_mark_px=-1)
    with pytest.raises(CheckpointError, match="min_mark_px 2.5"):
        ModelMeta(encoder="resnet18", min_mark_px=2.5)
    assert ModelMeta.from_dict(META.to_dict()) == META
    assert META.postprocesses and ModelMeta(encoder="resnet18", min_mark_px=40).postprocesses
    assert not ModelMeta(encoder="resnet18").postprocesses


def floods_touching(keep: np.ndarray, proba: np.ndarray, seeds: np.ndarray, inside: np.ndarray) -> bool:
    """Whether any 8-connected component of ``keep`` holds pixels of two different floods."""
    floods = watershed(-proba, seeds, mask=inside, connectivity=2)
    n, parts = cv2.connectedComponents(keep.astype(np.uint8), connectivity=8)
    return any(np.unique(floods[parts == k]).size > 1 for k in range(1, n))


def test_floods_meeting_on_a_diagonal_are_parted_along_the_valley() -> None:
    proba = blobs([(28, 40), (48, 62)], sigma=14)  # joined at 0.5 across a diagonal neck
    inside = proba >= 0.5
    seeds = cv2.connectedComponents((proba >= 0.9).astype(np.uint8), connectivity=8)[1].astype(np.int32)
    keep = flood_apart(proba, seeds, inside)
    assert components(keep) == 2 and not floods_touching(keep, proba, seeds, inside)
    assert not (keep & ~inside).any()
    removed = inside & ~keep
    assert 0 < removed.sum() <= 2 * 45, "a line about one pixel wide across the neck, not a band"
    assert proba[removed].max() < proba[keep].max() and proba[removed].max() <= 0.6, "the line is in the valley"


@pytest.mark.parametrize("seed", range(6))
def test_no_two_floods_stay_connected_on_random_probability_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    proba = cv2.GaussianBlur(rng.random((90, 110)).astype(np.float32), (0, 0), 4)
    proba = (proba - proba.min()) / (proba.max() - proba.min())
    inside = proba >= 0.3
    seeds = cv2.connectedComponents((proba >= 0.75).astype(np.uint8), connectivity=8)[1].astype(np.int32)
    keep = flood_apart(proba, seeds, inside)
    assert not (keep & ~inside).any()
    assert not floods_touching(keep, proba, seeds, inside)
    reached = watershed(-proba, seeds, mask=inside, connectivity=2) > 0
    assert (keep == reached).sum() >= 0.9 * reached.size, "only the lines between floods go"


def test_the_component_that_stalled_skimages_watershed_line_is_cut_in_two() -> None:
    # A half-trained model's touching marks: skimage's watershed_line=True took seconds on this box
    # (minutes without the mask), which stalled a GPU training run's validation for good.
    case = np.load(DATA / "stalling_watershed.npz")
    proba, seeds, inside = case["proba"], case["seeds"].astype(np.int32), case["inside"]
    keep = flood_apart(proba, seeds, inside)
    assert components(keep) == 2 and not floods_touching(keep, proba, seeds, inside)
    assert (inside & ~keep).sum() < 0.02 * inside.sum()
