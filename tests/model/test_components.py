"""One labelling of a mask shared by the post-processing steps while they leave the mask as it is,
and the masks exactly those of steps that each label the tile afresh."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from am.errors import InputError
from am.evaluate.heldout import held_out_images
from am.model.checkpoint import ModelMeta, default_model_path
from am.model.components import label, on_edge, parts_of
from am.model.lobes import join_lobes
from am.model.masks import _least_mark_px, drop_specks, mask_from_proba, median_mark
from am.model.predict import Predictor
from am.model.separate import OVERSIZE_FACTOR, RESEED_LEVELS, separate_touching, split_oversize
from am.model.shape_cut import cut_by_shape

# Held-out images on which, with the shipped model, every step changes the mask somewhere: 2 is
# left as thresholded by the later steps, 7 and 8 are cut at higher levels and by shape, 8 and 27
# lose specks, 27 has a mark's lobes joined (18 had, while its tiles' pitch was read as twice
# their 23.7 px).
IMAGES = (2, 7, 8, 27)


def test_a_labelling_is_passed_on_only_for_the_very_array_it_was_read_from() -> None:
    mask = np.zeros((30, 40), bool)
    mask[5:10, 5:10] = True
    mask[0:4, 30:36] = True
    first = label(mask)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    assert count == len(first.stats) == 3
    assert np.array_equal(first.labels, labels) and np.array_equal(first.stats, stats)
    assert np.allclose(first.centroids, centroids)
    assert first.parts[0] is first.labels
    assert label(mask, known=first) is first, "the same array is not labelled again"
    changed = mask.copy()
    changed[20:25, 20:25] = True
    again = label(changed, known=first)
    assert again is not first and len(again.stats) == 4, "a step's new mask is labelled afresh"
    assert parts_of(mask, None)[1].tolist() == first.stats.tolist()
    given = first.parts
    assert parts_of(mask, given) is given, "a caller's labelling is used as it is"
    for step in (lambda m, c: drop_specks(m, 20, components=c), lambda m, c: join_lobes(m, median=25.0, components=c)):
        with pytest.raises(InputError, match="must have one shape"):
            step(mask[:20], first.parts)
    assert on_edge(first.stats, mask.shape).tolist() == [True, True, False], "background, edge piece, mark"


def _one_by_one(proba: np.ndarray, meta: ModelMeta) -> tuple[np.ndarray, set[str]]:
    """The checkpoint's mask with every step labelling the tile itself, and the steps that changed it."""
    least = _least_mark_px(meta, 1.0)
    changed: set[str] = set()
    mask = separate_touching(proba, threshold=meta.threshold, seed_threshold=meta.seed_threshold)
    median = median_mark(mask, least)
    assert median is not None
    levels = tuple(level for level in RESEED_LEVELS if level > meta.seed_threshold)
    for name, step in (("split", lambda m: split_oversize(m, proba, median=median, levels=levels)),
                       ("shape", lambda m: cut_by_shape(m, proba, median=median, factor=OVERSIZE_FACTOR)),
                       ("specks", lambda m: drop_specks(m, meta.min_mark_px, fraction=meta.min_mark_fraction))):
        after = step(mask)
        if not np.array_equal(after, mask):
            changed.add(name)
        mask = after
    joined = join_lobes(mask, median=median_mark(mask, least))
    if not np.array_equal(joined, mask):
        changed.add("lobes")
    return joined, changed


def test_shared_labelling_gives_exactly_the_masks_of_steps_labelled_one_by_one() -> None:
    items = held_out_images(max(IMAGES) + 1)
    predictor = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2, precision="fp32")
    proba = predictor.predict_proba(np.stack([items[i].image for i in IMAGES]))
    fired: set[str] = set()
    for index, p in zip(IMAGES, proba, strict=True):
        expected, changed = _one_by_one(p, predictor.meta)
        fired |= changed
        assert np.array_equal(mask_from_proba(p, predictor.meta), expected), f"held-out image {index}"
    assert fired == {"split", "shape", "specks", "lobes"}, "every step changed some mask"
