"""Register one group of a dataset: read its stitched mask and source, write ``am_coords/<group>/``.

The paths follow the dataset layout (README, "Dataset layout")::

    DATASET/tiles_stitched/<group>/mask.tiff    (input: 8-bit 0/255, the image's size; 0/1, 1-bit
                                                 and grey masks are read too: see read_mask)
    DATASET/source_norm/<group>/source.tiff     (input: normalised 8-bit grey, for the overlay)
    DATASET/am_coords/<group>/...               (output: see am.register.outputs; written in
                                                 am_coords/.<group>.partial/, then moved in whole)

    reg = register_group(Path("ds"), "g1", rows=100, cols=100)
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from am.dataset import DatasetLayout
from am.errors import InputError
from am.files import check_can_replace, clear_output, staging, swap_in
from am.grid_shape import grid_shape_error
from am.imageio import read_image
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
        mask = read_mask(mask_path(dataset, group))
        source = read_source(source_path(dataset, group), mask.shape)
        if (replaced := source_replaced(DatasetLayout(dataset), group)) is not None:
            raise InputError(
                f"{replaced} is not the image {mask_path(dataset, group)} was made from (it was replaced since "
                f"python -m am.pipeline ran): rerun python -m am.pipeline {dataset} {group}, which segments it again"
            )
        if source.shape != mask.shape:
            raise InputError(
                f"{source_path(dataset, group)} is {source.shape[1]} x {source.shape[0]} px but "
                f"{mask_path(dataset, group)} is {mask.shape[1]} x {mask.shape[0]} px: rerun python -m am.pipeline "
                f"{dataset} {group}, which normalises the image again, or, where the mask did not come from it, "
                "put there an 8-bit grey TIFF of the mask's size"
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
        write_outputs(staged, registration, source=source, shown_as=target)
        swap_in(staged, place)
    log.info("group %s: ids, table, overlay and registration.json in %s", group, target)
    return registration


def remove_outputs(dataset: Path, group: str) -> None:
    """Remove ``am_coords/<group>/`` of an earlier registration, so that only this run's ids remain."""
    old = output_dir(dataset, group)
    if old.exists():
        log.info("group %s: removing the ids of an earlier registration in %s", group, old)
    clear_output(old)


# The levels of the mask am.pipeline writes: 0 background, 255 mark.
MASK_LEVELS = (0, 255)
# Of a mask with other levels (a JPEG-compressed or soft mask), values from this up are marks.
MARK_THRESHOLD = 128


def read_mask(path: Path) -> np.ndarray:
    """The stitched mask at ``path`` as 0/255, whatever two-level or grey mask a user put there.

    The library takes any value above 0 as a mark (the pipeline's masks are 0/255), which on a
    JPEG-compressed mask or a probability map with a background of 1-19 makes the whole background
    one mark, and registration then fails with a grid error that names neither the file nor the
    cause. So a mask read from a file is made binary here: 0/1 keeps 1 as mark, and any other set of
    levels is cut at :data:`MARK_THRESHOLD`, with a warning naming the file.
    """
    mask = read_grey_tiff(path, what="stitched mask")
    levels = np.flatnonzero(_grey_histogram(mask))
    if set(levels.tolist()) <= set(MASK_LEVELS):
        return mask
    if set(levels.tolist()) <= {0, 1}:
        return np.multiply(mask, np.uint8(255), out=mask)
    log.warning("stitched mask %s is not a 0/255 mask but has %d grey levels (%d-%d): taking values of %d and above "
                "as marks; check the overlay, or save the mask as 0 (background) and 255 (marks)",
                path, levels.size, levels[0], levels[-1], MARK_THRESHOLD)
    cv2.threshold(mask, MARK_THRESHOLD - 1, 255, cv2.THRESH_BINARY, dst=mask)
    return mask


def _grey_histogram(image: np.ndarray) -> np.ndarray:
    """Pixel counts of the 256 levels of an 8-bit image, without a copy of it (a 20000 px mask is 400 MB)."""
    return cv2.calcHist([image], [0], None, [256], [0, 256]).ravel()


def read_source(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The normalised source, the overlay's background; a missing one is said to be needed at the mask's size.

    A user who has only masks (from another segmentation) has no source/ for am.pipeline to
    normalise, so the message says what file to put there too.
    """
    if not path.exists():
        raise InputError(
            f"the normalised source {path} does not exist: put there an 8-bit grey TIFF of the mask's size "
            f"({shape[1]} x {shape[0]} px), the background of the overlay, or, where the mask came from "
            "python -m am.pipeline, rerun it on the dataset"
        )
    return read_grey_tiff(path, what="normalised source")


def read_grey_tiff(path: Path, *, what: str) -> np.ndarray:
    """Read a single-channel 8-bit TIFF, with errors that say how to produce it.

    Read by am.imageio, as every image of the package: a damaged or truncated file (a compressed
    mask cut short by a full disk) is an InputError naming it, which fails only its group, where
    tifffile's own errors (a codec's, ZeroDivisionError, MemoryError) stopped every later group.
    A 1-bit mask (ImageJ, PIL mode "1") comes back as 0/255.
    """
    if not path.exists():
        raise InputError(f"the {what} {path} does not exist: run python -m am.pipeline on the dataset first")
    if not path.is_file():
        raise InputError(f"the {what} {path} is a folder, not a file: put the TIFF itself at that path")
    try:
        image = read_image(path)
    except InputError as exc:
        raise _unreadable(path, what, exc) from exc
    if image.ndim != 2 or image.dtype != np.uint8:
        raise InputError(
            f"the {what} {path} must be 8-bit single-channel, got {image.dtype} with shape {image.shape}: "
            "save it as an 8-bit grey TIFF, or, where python -m am.pipeline wrote it, rerun it on the dataset"
        )
    return image


def _unreadable(path: Path, what: str, exc: InputError) -> InputError:
    """The error for a file am.imageio cannot read, with the fix that applies at this fixed path.

    Where the reader gives the reason alone (a PNG or JPEG under this name), its own fix (rename the
    file) does not apply: the file must be a TIFF at this path.
    """
    if exc.reason:
        return InputError(f"the {what} {path} cannot be read: {exc.reason}; save it as an 8-bit grey TIFF at "
                          "that path, or, where python -m am.pipeline wrote it, rerun it on the dataset")
    return InputError(f"the {what} {exc} (where python -m am.pipeline wrote it, rerun it on the dataset, which "
                      "writes it again)")
