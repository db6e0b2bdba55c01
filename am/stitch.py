"""Stitching stage: mask tiles from the dataset into one mask of exactly the input's size."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from am.dataset import DatasetLayout
from am.errors import InputError, describe_fault
from am.imageio import decode_png, read_image, write_png, write_tiff
from am.mask_resize import shrink_apart
from am.overlay import mask_overlay
from am.prepare import PreparedGroup
from am.tiling import Stitcher

log = logging.getLogger(__name__)

# The overlay is a picture for a person, written once per group at the very end of a run: zlib
# level 1 without row filters encodes a 5000 px overlay in about half the time of level 1 with
# libpng's adaptive filters (which is itself a third faster than the level tiles use), at the same size.
OVERLAY_PNG_COMPRESSION = 1


def stitch_group(layout: DatasetLayout, prepared: PreparedGroup) -> np.ndarray:
    """Stitch a group's mask tiles, write mask.tiff and overlay.png, and return the mask."""
    mask = stitch_mask(layout, prepared)
    write_mask_overlay(layout, prepared.group, mask)
    return mask


def stitch_mask(layout: DatasetLayout, prepared: PreparedGroup) -> np.ndarray:
    """Stitch a group's mask tiles and write mask.tiff; returns the mask (the overlay is separate, see below)."""
    group, plan = prepared.group, prepared.plan
    stitcher = Stitcher(plan)
    for tile in plan.tiles:
        path = layout.tile_mask(group, tile.index)
        if not path.is_file():
            raise InputError(f"mask tile {path} is missing; rerun the same command to make it")
        try:
            data = decode_png(path.read_bytes(), name=str(path))
        except InputError as exc:
            # A rerun trusts every mask file that exists, so only removing this one gets it made again.
            raise InputError(f"mask tile {path} is damaged ({describe_fault(exc)}); delete it and rerun the same "
                             "command to make it again") from exc
        if data.shape != (plan.tile_size, plan.tile_size):
            raise InputError(f"mask tile {path} is {data.shape[1]}x{data.shape[0]}, not "
                             f"{plan.tile_size}x{plan.tile_size}; delete it and rerun to make it again")
        stitcher.add(tile.index, data)
    mask = at_source_size(stitcher.finalize(), prepared.source_height, prepared.source_width)
    write_tiff(layout.stitched_mask(group), mask)
    log.info("group %s: stitched %d tiles into %s", group, len(plan.tiles), layout.stitched_mask(group))
    return mask


def at_source_size(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask stitched at the tiles' scale as a 0/255 mask of the image's own ``height`` x ``width``.

    Resized linearly and cut at half way, so a mark's outline moves by under a pixel of the image
    whichever way the scale went; in place and in uint8 (a 20000 px mask must not grow int64
    temporaries of 3 GB). A mask shrunk on either side (``--scale`` above 1) goes through
    :func:`am.mask_resize.shrink_apart`: averaged with its neighbours, the one-pixel line the model
    draws between touching marks would vanish and join them.
    """
    if height < mask.shape[0] or width < mask.shape[1]:
        return shrink_apart(mask, height, width)
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
        cv2.threshold(mask, 127, 255, cv2.THRESH_BINARY, dst=mask)
    else:
        cv2.threshold(mask, 0, 255, cv2.THRESH_BINARY, dst=mask)
    return mask


def write_mask_overlay(layout: DatasetLayout, group: str, mask: np.ndarray) -> None:
    """Draw the mask over the normalised image and write overlay.png.

    Kept apart from :func:`stitch_mask` because encoding a large colour PNG takes seconds and
    nothing downstream reads it: the pipeline writes it on a thread while registration runs
    (OpenCV releases the GIL while it draws and encodes).
    """
    source = read_image(layout.source_norm(group))
    if source.shape != mask.shape:  # a file changed on disk since the run began: said with its name
        raise InputError(f"{layout.source_norm(group)} is {source.shape[1]} x {source.shape[0]} px but group "
                         f"{group}'s mask is {mask.shape[1]} x {mask.shape[0]} px: delete it and rerun python -m "
                         f"am.pipeline {layout.root} {group}, which normalises the image again")
    write_png(layout.stitched_overlay(group), mask_overlay(source, mask), compression=OVERLAY_PNG_COMPRESSION,
              bgr=True, row_filter="none")
    log.info("group %s: wrote %s", group, layout.stitched_overlay(group))
