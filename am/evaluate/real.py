"""Judge a model on the real post-MALDI samples (``shared/data/real``, see its README).

Every image is normalised as the pipeline normalises its input (a 1-99 percentile stretch,
:func:`am.normalize.read_normalised`), so the figures are those of the masks a user gets: the
crops are not stretched as stored (crop2 spans 13-149 between its 1st and 99th percentiles).

- ``cropN_image.png`` are half-resolution (1 px = 2.04 original px) crops with the original
  project's U-Net masks as references: we predict them as the pipeline does at ``--scale 2.04``
  (the crop enlarged to full resolution, segmented, its mask brought back to the crop's
  resolution) and compare (Dice, IoU, object F1);
- crop1 has a bright out-of-focus blob that is not a mark: we count predicted marks on it;
- ``tile_a_512.png`` and ``tile_b_512.png`` have no reference: we write overlays for a person,
  count the marks found and the specks (components under 48 px, too small to be marks).

::

    report = evaluate_real(predictor, Path("../shared/data/real"), overlays=Path("quality"))
    report["crops"]["crop2"]["dice"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from am.errors import InputError
from am.evaluate.lost import account
from am.evaluate.metrics import score_and_overlaps
from am.imageio import read_image, write_png
from am.model.predict import Predictor
from am.model.whole import predict_image_mask
from am.normalize import read_normalised

CROP_SCALE = 2.04
CROPS = (1, 2, 3)
TILES = ("tile_a_512", "tile_b_512")
# Every file of the real samples that evaluation reads.
SAMPLE_FILES = (*(f"crop{n}_{kind}.png" for n in CROPS for kind in ("image", "reference_mask")),
                *(f"{name}.png" for name in TILES))
# The out-of-focus blob of crop1 in crop pixels (x0, y0, x1, y1), judged by eye; the real mark
# touching its right edge is excluded through the reference mask.
CROP1_BLOB_BOX = (86, 32, 108, 72)
# Components smaller than this (in crop pixels) are specks, not marks.
MIN_MARK_PX = 12


def check_real_dir(real_dir: Path) -> Path:
    """``real_dir`` as a Path, once it is known to hold the real samples."""
    real_dir = Path(real_dir)
    if not (real_dir / "crop1_image.png").is_file():
        raise InputError(f"{real_dir} does not hold the real samples (crop1_image.png is missing)")
    return real_dir


def read_crops(real_dir: Path) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``(n, normalised image, reference mask as bool)`` for crop1..3 of a checked ``real_dir``."""
    return [(n, read_normalised(real_dir / f"crop{n}_image.png"),
             read_image(real_dir / f"crop{n}_reference_mask.png") > 0) for n in CROPS]


def evaluate_real(predictor: Predictor, real_dir: Path, *, overlays: Path | None = None) -> dict[str, Any]:
    """Score the model on the real samples the way the README's tables report them.

    The crops are half-resolution, so they are predicted at ``CROP_SCALE``; the tiles have no
    reference and are described by their marks and specks, for a person to check on the overlays.
    """
    real_dir = check_real_dir(real_dir)
    report: dict[str, Any] = {"crops": {}, "tiles": {}}
    for n, image, reference in read_crops(real_dir):
        predicted = predict_image_mask(predictor, image, scale=CROP_SCALE)
        s, found = score_and_overlaps(reference, predicted, min_object_px=MIN_MARK_PX)
        entry = {"dice": s.dice, "iou": s.iou, "f1": s.f1, "reference_marks": s.true_objects,
                 "predicted_marks": s.predicted_objects, "lost": account(found).as_dict()}
        if n == 1:
            entry["blob_false_marks"], entry["blob_false_px"] = blob_false_marks(predicted, reference)
        report["crops"][f"crop{n}"] = entry
        if overlays is not None:
            write_png(Path(overlays) / f"crop{n}.png", _enlarge(_overlay(image, predicted, reference), 3))
    for name in TILES:
        image = read_normalised(real_dir / f"{name}.png")
        predicted = predict_image_mask(predictor, image)
        _, _, stats, _ = cv2.connectedComponentsWithStats(predicted.astype(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        mark_sized = areas >= MIN_MARK_PX * 4
        small = areas[~mark_sized]
        report["tiles"][name] = {"marks": int(mark_sized.sum()),
                                 "specks": len(small), "speck_px": int(small.sum()),
                                 "median_area_px": float(np.median(areas)) if len(areas) else 0.0,
                                 "mask_fraction": float(predicted.mean())}
        if overlays is not None:
            write_png(Path(overlays) / f"{name}.png", _overlay(image, predicted, None))
    return report


def blob_false_marks(predicted: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
    """Predicted components lying mostly on crop1's blob and away from reference marks, and their pixels."""
    x0, y0, x1, y1 = CROP1_BLOB_BOX
    near_mark = cv2.dilate(reference.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    count, labels = cv2.connectedComponents(predicted.astype(np.uint8), connectivity=8)
    false_marks, false_px = 0, 0
    for label in range(1, count):
        ys, xs = np.nonzero(labels == label)
        inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1) & ~near_mark[ys, xs]
        false_px += int(inside.sum())
        if inside.sum() >= max(MIN_MARK_PX // 2, 0.5 * len(xs)):
            false_marks += 1
    return false_marks, false_px


def _overlay(image: np.ndarray, predicted: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """Grey image with predicted outlines in red and reference outlines in green."""
    rgb = np.repeat(image[:, :, None], 3, axis=2).copy()
    if reference is not None:
        contours, _ = cv2.findContours(reference.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, (0, 220, 0), 1)
    contours, _ = cv2.findContours(predicted.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (255, 40, 40), 1)
    return rgb


def _enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
