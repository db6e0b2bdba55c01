"""Register one group of a dataset: read its stitched mask and source, write ``am_coords/<group>/``.

The paths follow the dataset layout (README, "Dataset layout")::

    DATASET/tiles_stitched/<group>/mask.tiff    (input: 8-bit 0/255, the image's size)
    DATASET/source_norm/<group>/source.tiff     (input: normalised 8-bit grey, for the overlay)
    DATASET/am_coords/<group>/...               (output: see am.register.outputs; written in
                                                 am_coords/.<group>.partial/, then moved in whole)

    reg = register_group(Path("ds"), "g1", rows=100, cols=100)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tifffile

from am.dataset import DatasetLayout
from am.errors import InputError
from am.files import check_can_replace, clear_output, staging, swap_in
from am.grid_shape import grid_shape_error
from am.prepare import source_replaced
from am.register.outputs import write_outputs
from am.register.registration import Registration, register_mask

log = logging.getLogger(__name__)


def mask_path(dataset: Path, group: str) -> Path:
    return Path(dataset) / "tiles_stitched" / group / "mask.tiff"


def source_path(dataset: Path, group: str) -> Path:
    return Path(dataset) / "source_norm" / group / "source.tiff"


def output_dir(dataset: Path, group: str) -> Path:
    return Path(dataset) / "am_coords" / group


def register_group(dataset: Path, group: str, *, rows: int | None, cols: int | None) -> Registration:
    """Register ``group`` of ``dataset`` and write its outputs; returns the registration.

    Raises InputError when an input is missing or unreadable, RegistrationError when the marks
    do not fit the requested grid. Such a failure removes the outputs of an earlier registration
    of the group, so that no ids of another grid or mask remain to be mistaken for this run's; an
    interrupt, or a write that fails (a full disk), leaves them as they were (whole, and matching
    their own registration.json), and a success replaces them whole.
    """
    dataset = Path(dataset)
    problem = grid_shape_error(rows, cols)
    if problem:
        raise InputError(problem)  # before the earlier outputs go: a mistyped shape costs nothing
    # Before the earlier outputs go, too: a read-only folder would otherwise lose them and get none.
    check_can_replace([output_dir(dataset, group)])
    try:
        mask = read_grey_tiff(mask_path(dataset, group), what="stitched mask")
        source = read_grey_tiff(source_path(dataset, group), what="normalised source")
        if (replaced := source_replaced(DatasetLayout(dataset), group)) is not None:
            raise InputError(
                f"{replaced} is not the image {mask_path(dataset, group)} was made from (it was replaced since "
                f"python -m am.pipeline ran): rerun python -m am.pipeline {dataset} {group}, which segments it again"
            )
        if source.shape != mask.shape:
            raise InputError(
                f"{source_path(dataset, group)} is {source.shape[1]} x {source.shape[0]} px but "
                f"{mask_path(dataset, group)} is {mask.shape[1]} x {mask.shape[0]} px: rerun python -m am.pipeline "
                f"{dataset} {group}, which normalises the image again"
            )
        log.info("registering group %s (%d x %d px)", group, mask.shape[1], mask.shape[0])
        registration = register_mask(mask, rows=rows, cols=cols, name=f"group {group}")
    except Exception:  # not an interrupt: a registration that failed, for whatever reason, leaves no ids
        remove_outputs(dataset, group)
        raise
    # All the files or none: an interrupt or a full disk while the overlays are drawn (seconds on
    # a large grid) must not leave a folder that holds ids but looks finished.
    target = output_dir(dataset, group)
    # An output folder linked to another disk is replaced there, beside the folder the link names,
    # so that the link (and the disk it chose) stays.
    place = target.resolve() if target.is_symlink() else target
    with staging(DatasetLayout(dataset).am_coords_staging(group)) as staged:
        write_outputs(staged, registration, source=source)
        swap_in(staged, place)
    log.info("group %s: ids, table, overlay and registration.json in %s", group, target)
    return registration


def remove_outputs(dataset: Path, group: str) -> None:
    """Remove ``am_coords/<group>/`` of an earlier registration, so that only this run's ids remain."""
    old = output_dir(dataset, group)
    if old.exists():
        log.info("group %s: removing the ids of an earlier registration in %s", group, old)
    clear_output(old)


def read_grey_tiff(path: Path, *, what: str) -> np.ndarray:
    """Read a single-channel 8-bit TIFF, with errors that say how to produce it."""
    if not path.is_file():
        raise InputError(f"the {what} {path} does not exist: run python -m am.pipeline on the dataset first")
    try:
        image = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise InputError(f"the {what} {path} cannot be read as TIFF ({exc}): rerun python -m am.pipeline on the "
                         "dataset, which writes it again") from exc
    # Only a trailing channel axis of one goes: squeezing every axis of one collapsed a legal mask
    # one pixel high or wide (a 1 x 1 mask became a 0-D array).
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2 or image.dtype != np.uint8:
        raise InputError(
            f"the {what} {path} must be 8-bit single-channel, got {image.dtype} with shape {image.shape}: "
            "rerun python -m am.pipeline"
        )
    return image
