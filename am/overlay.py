"""Overlays for a person to check the masks: the source in grey with marks tinted and outlined."""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

# Larger overlays are drawn on a downsampled copy: a full 20000 px RGB overlay needs 1.2 GB.
MAX_OVERLAY_SIDE = 10000
MASK_TINT_BGR = (0, 0, 255)
OUTLINE_BGR = (0, 255, 255)
BLOCK_ROWS = 1024


def mask_overlay(source: np.ndarray, mask: np.ndarray, *, alpha: float = 0.35,
                 max_side: int = MAX_OVERLAY_SIDE) -> np.ndarray:
    """A BGR image: ``source`` (uint8 grey) with ``mask`` (0/255) tinted red and outlined yellow."""
    if source.shape != mask.shape:
        raise ValueError(f"source {source.shape} and mask {mask.shape} differ in size")
    height, width = source.shape
    factor = min(1.0, max_side / max(height, width))
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        source = cv2.resize(source, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST_EXACT)  # pixel centres, as INTER_AREA
        log.info("overlay drawn at %.2f of full size (%dx%d)", factor, size[0], size[1])
    out = cv2.cvtColor(source, cv2.COLOR_GRAY2BGR)
    # Tint in row blocks, in uint8: whole-image float copies would cost several GB on large masks.
    for top in range(0, out.shape[0], BLOCK_ROWS):
        rows = slice(top, top + BLOCK_ROWS)
        block = out[rows]
        tinted = cv2.addWeighted(block, 1 - alpha, np.full_like(block, MASK_TINT_BGR), alpha, 0)
        np.copyto(block, tinted, where=(mask[rows] > 0)[..., None])
    contours, _ = cv2.findContours((mask > 0).view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, OUTLINE_BGR, 1)
    return out
