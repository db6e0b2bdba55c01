"""From probabilities to the checkpoint's mask (threshold, touching marks cut apart, specks dropped),
and the Predictor writing exactly that mask."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from am.errors import CheckpointError
from am.evaluate.heldout import held_out_images
from am.model.checkpoint import ModelMeta, default_model_path, load_checkpoint
from am.model.masks import (
    DEFAULT_MIN_MARK_FRACTION,
    DEFAULT_MIN_MARK_PX,
    MIN_MARKS_FOR_MEDIAN,
    drop_specks,
    mask_from_proba,
)
from am.model.predict import Predictor
from am.model.separate import DEFAULT_SEED_THRESHOLD, MIN_SEED_PX
from tests.model.test_separate import blobs, components

META = ModelMeta(encoder="resnet18", threshold=0.5, seed_threshold=0.9)


def test_specks_away_from_the_edge_are_dropped_and_edge_pieces_kept() -> None:
    mask = np.zeros((60, 60), dtype=bool)
    mask[20:30, 20:30] = True  # 100 px: a mark
    mask[40:44, 40:44] = True  # 16 px inside: a speck
    mask[0:3, 10:14] = True  # 12 px on the top edge: perhaps the visible part of a cut mark
    mask[50:60, 57:60] = True  # 30 px on the right edge
    kept = drop_specks(mask, 20)
    assert not kept[40:44, 40:44].any()
    assert np.array_equal(kept, mask & ~np.pad(np.ones((4, 4), bool), ((40, 16), (40, 16))))
    assert np.array_equal(drop_specks(mask, 16), mask), "a component of exactly the minimum stays"
    assert np.array_equal(drop_specks(np.zeros((5, 5), bool), 20), np.zeros((5, 5), bool))


def test_mask_from_proba_follows_the_checkpoint_and_the_pixel_area() -> None:
    big = blobs([(40, 45), (40, 75)], sigma=14)
    plain = big >= 0.5
    assert components(mask_from_proba(big, META)) == 2
    assert np.array_equal(mask_from_proba(big, META, postprocess=False), plain)
    assert np.array_equal(mask_from_proba(big, dataclasses.replace(META, seed_threshold=None)), plain)
    # Smaller marks whose cores are under MIN_SEED_PX: one mark at the model's scale, two where each
    # pixel of the probabilities stands for 4 model pixels (inference on a tile enlarged twice).
    small = blobs([(40, 50), (40, 70)], sigma=9)
    core_px = int((small >= 0.9).sum() // 2)
    assert core_px < MIN_SEED_PX <= 4 * core_px
    assert components(small >= 0.5) == 1
    assert components(mask_from_proba(small, META)) == 1
    assert components(mask_from_proba(small, META, pixel_area=4.0)) == 2
    # Every step off, or none named by the checkpoint: the bare threshold.
    assert np.array_equal(mask_from_proba(big, META, postprocess=False), plain)


def test_min_mark_px_drops_specks_in_model_pixels() -> None:
    proba = blobs([(30, 40)], sigma=10) * 0.95  # a mark, about 450 px at 0.5
    proba[60:63, 90:93] = 0.8  # a 9 px speck
    meta = dataclasses.replace(META, seed_threshold=None, min_mark_px=10)
    assert components(proba >= 0.5) == 2
    assert components(mask_from_proba(proba, meta)) == 1
    # The same speck in probabilities brought back from a tile enlarged twice stands for 36 model px.
    assert components(mask_from_proba(proba, meta, pixel_area=4.0)) == 2
    assert components(mask_from_proba(proba, dataclasses.replace(meta, min_mark_px=0))) == 2


def lattice_of_marks(count: int, side: int = 12) -> np.ndarray:
    """``count`` square marks of ``side`` px on a 30 px lattice, all away from the edge."""
    mask = np.zeros((200, 200), dtype=bool)
    for i in range(count):
        y, x = 20 + 30 * (i // 5), 20 + 30 * (i % 5)
        mask[y : y + side, x : x + side] = True
    return mask


def test_fraction_of_the_median_mark_drops_fragments_of_any_size() -> None:
    marks = lattice_of_marks(MIN_MARKS_FOR_MEDIAN)  # 144 px each
    with_debris = marks.copy()
    with_debris[172:179, 20:26] = True  # 42 px: past the fixed size, under 0.3 of the median mark
    with_debris[170:180, 100:106] = True  # 60 px: 0.42 of the median, stays
    with_debris[195:200, 60:70] = True  # 50 px on the edge: perhaps a cut mark, stays
    kept = drop_specks(with_debris, 20, fraction=0.3)
    assert not kept[172:179, 20:26].any()
    assert np.array_equal(kept, with_debris & ~_box(172, 179, 20, 26))
    assert np.array_equal(drop_specks(with_debris, 20), with_debris), "fraction 0: the fixed size alone"
    # Too few components for a median to mean anything (with the fragment, one short): the fixed size decides.
    few = lattice_of_marks(MIN_MARKS_FOR_MEDIAN - 2) | _box(172, 179, 20, 26)
    assert np.array_equal(drop_specks(few, 20, fraction=0.3), few)
    one_more = lattice_of_marks(MIN_MARKS_FOR_MEDIAN - 1) | _box(172, 179, 20, 26)
    assert np.array_equal(drop_specks(one_more, 20, fraction=0.3), one_more & ~_box(172, 179, 20, 26))
    # A few large false regions do not move the median: the marks stay, the fragment goes.
    merged = with_debris | _box(80, 150, 30, 90) | _box(80, 150, 110, 190)
    kept = drop_specks(merged, 20, fraction=0.3)
    assert np.array_equal(kept, merged & ~_box(172, 179, 20, 26))


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    box = np.zeros((200, 200), dtype=bool)
    box[y0:y1, x0:x1] = True
    return box


def test_mask_from_proba_applies_the_fraction_the_checkpoint_names() -> None:
    proba = lattice_of_marks(10).astype(np.float32) * 0.95
    proba[172:179, 20:26] = 0.8  # a 42 px fragment
    meta = dataclasses.replace(META, seed_threshold=None, min_mark_px=10)
    assert components(mask_from_proba(proba, meta)) == 11
    assert components(mask_from_proba(proba, dataclasses.replace(meta, min_mark_fraction=0.3))) == 10
    assert components(mask_from_proba(proba, dataclasses.replace(meta, min_mark_fraction=0.3), postprocess=False)) == 11
    alone = dataclasses.replace(META, seed_threshold=None, min_mark_px=0, min_mark_fraction=0.3)
    assert alone.postprocesses and components(mask_from_proba(proba, alone)) == 10


def test_min_mark_fraction_is_checked() -> None:
    for bad in (-0.1, 1.0, True, "0.3"):
        with pytest.raises(CheckpointError, match="min_mark_fraction"):
            ModelMeta(encoder="resnet18", min_mark_fraction=bad)
    assert ModelMeta(encoder="resnet18", min_mark_fraction=0.3).min_mark_fraction == 0.3
    assert ModelMeta(encoder="resnet18").min_mark_fraction == 0.0, "checkpoints written before the rule: off"


def test_the_shipped_model_names_the_default_steps() -> None:
    meta, _ = load_checkpoint(default_model_path())
    assert (meta.seed_threshold, meta.min_mark_px, meta.min_mark_fraction) == (
        DEFAULT_SEED_THRESHOLD, DEFAULT_MIN_MARK_PX, DEFAULT_MIN_MARK_FRACTION)


def test_predictor_masks_equal_the_post_processed_probabilities() -> None:
    """What the worker writes (predict) is what evaluation scores (mask_from_proba of predict_proba)."""
    tiles = np.stack([item.image for item in held_out_images(2)])
    predictor = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2)
    assert predictor.postprocess
    masks = predictor.predict(tiles)
    assert predictor.last_times.postprocess > 0
    proba = predictor.predict_proba(tiles)
    for mask, p in zip(masks, proba, strict=True):
        expected = mask_from_proba(p, predictor.meta)
        assert np.array_equal(mask > 0, expected)
        assert set(np.unique(mask)) <= {0, 255}
    plain = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2, postprocess=False)
    assert not plain.postprocess
    plain_masks = plain.predict(tiles)
    assert np.array_equal(plain_masks > 0, proba >= predictor.meta.threshold)
    assert plain.last_times.postprocess == 0
    # Post-processing only ever removes pixels; on these dense tiles it cuts some marks apart.
    assert not ((masks > 0) & (plain_masks == 0)).any()
    cut = 0
    for mask, plain_mask in zip(masks, plain_masks, strict=True):
        count, labels = cv2.connectedComponents(plain_mask, connectivity=8)
        pieces = cv2.connectedComponents(mask, connectivity=8)[1]
        cut += sum(len(np.unique(pieces[(labels == i) & (pieces > 0)])) >= 2 for i in range(1, count))
    assert cut > 0
