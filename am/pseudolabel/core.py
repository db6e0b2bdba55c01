"""Pseudo-labelling: from one large image and a few labelled crops of it to a model for the whole image.

The original project's semi-supervised recipe, in four steps:

1. train a small, strongly regularised model on the labelled crops only (with two or more, the
   last is held out of every training and validates both models);
2. predict the whole image with it (optionally averaged over mirrored and turned views, ``tta``);
3. keep the confident pixels (probability >= ``high`` is a mark, <= ``low`` is background) and
   mark the rest unknown (loss weight 0), dropping confident marks too small to be real;
4. train a bigger model on the whole image with those pseudo-labels, plus the crops.

Everything a person needs to check the result is written to ``out_dir``::

    result = pseudo_label(image, labels, out_dir=Path("pl"), config=PseudoConfig())
    result.mask, result.known          # the pseudo-labels and where they are trusted
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from am.dataset_lock import LOCK_NAME, dataset_lock
from am.errors import CheckpointError, InputError
from am.files import staging
from am.imageio import write_png
from am.model.checkpoint import check_buildable, check_input_sizes
from am.model.device import resolve_device
from am.model.predict import Predictor
from am.model.whole import predict_image_proba
from am.prepare import MIN_IMAGE_SIDE_PX, check_image_size
from am.train.data import MIN_TRAINING_SIDE_PX, Labelled
from am.train.fits import step_memory_problem
from am.train.loop import TrainConfig, train

log = logging.getLogger(__name__)

# Hidden folder inside the output folder where a run is made before it is moved into place.
STAGING_NAME = ".pseudolabel.partial"
# Every file a run may leave in the output folder (models, their training records, masks, summary).
OUTPUTS = ("pseudo_mask.png", "known.png", "overlay.png", "summary.json",
           *(f"{model}{suffix}" for model in ("small", "model")
             for suffix in (".pt", ".metrics.csv", ".metrics.json", ".resume")))


@dataclass(frozen=True)
class CropLabel:
    """A 0/255 mask of the image region whose top-left corner is (x, y).

    ``name`` is the file it was read from, so that a message about it names what to correct.
    """

    x: int
    y: int
    mask: np.ndarray
    name: str = ""


def label_file(label: CropLabel) -> str:
    """The file name a message gives ``label``: the one it was read from, else the X_Y.png the labels folder
    would hold it as (a library caller's label read from no file)."""
    return label.name or f"{label.x}_{label.y}.png"


# Overlapping hand-labelled crops may differ along a mark's edge; beyond this share of the pixels
# they share, they contradict each other.
LABEL_DISAGREEMENT = 0.02


@dataclass(frozen=True)
class PseudoConfig:
    small_encoder: str = "tu-mobilenetv3_small_100"
    small_depth: int = 4
    small_decoder: tuple[int, ...] = (64, 32, 16, 8)
    small_epochs: int = 8
    small_weight_decay: float = 5e-2
    big_encoder: str = "tu-mobilenetv3_large_100"
    big_depth: int = 5
    big_decoder: tuple[int, ...] = (128, 64, 32, 16, 8)
    big_epochs: int = 10
    steps_per_epoch: int = 40
    batch_size: int = 8
    crop: int = 128
    low: float = 0.2
    high: float = 0.8
    min_mark_px: int = 20
    seed: int = 0
    threads: int = 0
    # Test-time augmentation of step 2 (am.model.tta): the small model's averaged views.
    tta: str = "off"


@dataclass(frozen=True)
class PseudoResult:
    mask: np.ndarray  # uint8 0/255, the pseudo-labels
    known: np.ndarray  # bool, where the pseudo-labels are trusted
    small_model: Path
    model: Path
    summary: dict


def crops_from_labels(image: np.ndarray, labels: list[CropLabel]) -> list[Labelled]:
    """Cut the labelled regions out of ``image``; a label must lie fully inside it."""
    items = []
    height, width = image.shape
    for label in labels:
        h, w = label.mask.shape
        if label.x < 0 or label.y < 0 or label.x + w > width or label.y + h > height:
            what = f"label {label.name}" if label.name else "label"
            raise InputError(f"{what} at x={label.x}, y={label.y} of size {w}x{h} does not fit the "
                             f"{width}x{height} image: its name gives its top-left column and row in the image, "
                             "and it must end inside the image")
        crop = image[label.y : label.y + h, label.x : label.x + w]
        items.append(Labelled.from_arrays(crop, label.mask, name=f"crop_{label.x}_{label.y}"))
    return items


def confident_labels(proba: np.ndarray, *, low: float, high: float, min_mark_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-mask (0/255) and trust map from probabilities; small confident blobs become unknown."""
    if not 0.0 <= low < high <= 1.0:
        raise InputError(f"confidence bounds must satisfy 0 <= low < high <= 1, got {low}, {high}")
    marks = (proba >= high).astype(np.uint8)
    known = (proba >= high) | (proba <= low)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(marks, connectivity=8)
    small = np.nonzero(stats[:, cv2.CC_STAT_AREA] < min_mark_px)[0]
    small = small[small > 0]
    if len(small):
        tiny = np.isin(labels, small)
        marks[tiny] = 0
        known[tiny] = False
    # The fringe of each mark is where the small model is least sure: leave it to the big one.
    kernel = np.ones((3, 3), np.uint8)
    fringe = (cv2.dilate(marks, kernel) > 0) & ~(cv2.erode(marks, kernel) > 0)
    known &= ~fringe
    return marks * np.uint8(255), known


def check_config(config: PseudoConfig) -> None:
    """Raise InputError for settings that would fail or train nothing, before any work.

    Both models' encoders and architectures are checked here: finding a bad big model only at
    step 4 would cost the whole small-model training first.
    """
    for name in ("small_epochs", "big_epochs", "steps_per_epoch", "batch_size"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
    if config.crop < 64 or config.crop % 32:
        raise InputError(f"crop {config.crop} must be a multiple of 32 and at least 64")
    if not 0.0 <= config.low < config.high <= 1.0:
        raise InputError(f"confidence bounds must satisfy 0 <= low < high <= 1, got {config.low}, {config.high}")
    for which, model in _both_models(config).items():
        try:
            meta = model.meta(trained=False)
            check_buildable(meta)
            check_input_sizes(meta, {"tile size": meta.tile_size, "crop": config.crop})
        except CheckpointError as exc:
            raise InputError(f"the {which} model: {exc}") from exc


def check_memory(config: PseudoConfig) -> None:
    """Raise InputError where a training step of either model cannot fit in memory (:mod:`am.train.fits`):
    the kernel would otherwise kill the run, without a word, after minutes of work."""
    for which, model in _both_models(config).items():
        if problem := step_memory_problem(model.meta(trained=False), batch_size=config.batch_size, crop=config.crop,
                                          device=resolve_device(model.device or None),
                                          what=f"training the {which} model"):
            raise InputError(problem)


def _both_models(config: PseudoConfig) -> dict[str, TrainConfig]:
    """The two trainings' configurations as the checks before any work see them (no data counted yet)."""
    return {"small": _small_config(config, Path("small.pt"), crops=0),
            "big": _big_config(config, Path("model.pt"), crops=0, known_fraction=0.0)}


def _small_config(config: PseudoConfig, out: Path, *, crops: int) -> TrainConfig:
    return TrainConfig(out=out, encoder=config.small_encoder, encoder_depth=config.small_depth,
                       decoder_channels=config.small_decoder, epochs=config.small_epochs,
                       steps_per_epoch=config.steps_per_epoch, batch_size=config.batch_size, crop=config.crop,
                       weight_decay=config.small_weight_decay, warmup_steps=min(50, config.steps_per_epoch),
                       seed=config.seed, threads=config.threads,
                       data_summary={"pseudo_label": "step 1: labelled crops", "crops": crops},
                       # small_depth is fixed here, not an option: its deepest encoder stage is left unused on purpose.
                       warn_unused=False)


def _big_config(config: PseudoConfig, out: Path, *, crops: int, known_fraction: float) -> TrainConfig:
    return replace(_small_config(config, out, crops=crops),
                   encoder=config.big_encoder, encoder_depth=config.big_depth, decoder_channels=config.big_decoder,
                   epochs=config.big_epochs, weight_decay=1e-4, warn_unused=True,
                   data_summary={"pseudo_label": "step 4: pseudo-labelled image + crops", "crops": crops,
                                 "known_fraction": known_fraction})


def check_crop_fits(image: np.ndarray, crop: int) -> None:
    """Raise InputError where training crops of ``crop`` px cannot be cut from ``image``: step 4 draws
    them from the whole image, and a crop larger than it would only be padded into memory exhaustion."""
    height, width = image.shape
    if crop <= min(height, width):
        return
    largest = min(height, width) // 32 * 32
    if largest < 64:
        raise InputError(f"the image ({width} x {height} px) is smaller than the smallest training crop, 64 px")
    raise InputError(f"--crop {crop} is larger than the image ({width} x {height} px); give at most {largest}")


def check_labels_have_marks(labels: list[CropLabel]) -> None:
    """Raise InputError where no crop trained on holds a mark: the models would learn to find nothing, and
    the run would still write them. A held-out crop without marks is only warned about (its figures mean
    nothing, but training does not depend on it)."""
    trained, held = (labels[:-1], labels[-1]) if len(labels) >= 2 else (labels, None)
    if not any(label.mask.any() for label in trained):
        raise InputError("no labelled crop in --labels contains a mark (every mask is 0): label at least one crop "
                         "with marks")
    if held is not None and not held.mask.any():
        log.warning("the held-out crop %s (the last by name) contains no mark: the validation figures in "
                    "summary.json, and the epoch each model keeps, then mean nothing; label a crop with marks last",
                    label_file(held))


def check_label_sizes(labels: list[CropLabel], *, folder: Path | None = None) -> None:
    """Raise InputError naming every labelled crop too small for its part in the run, before any training.

    The crop that validates both models (the last by name, held out; the only one where there is one)
    is predicted as the pipeline predicts an image, which refuses one under
    :data:`~am.prepare.MIN_IMAGE_SIDE_PX` on a side: unchecked, that failed only after the small
    model's first epoch, in a message naming no label. A crop trained on needs
    :data:`~am.train.data.MIN_TRAINING_SIDE_PX`, as am.train's images do: smaller, it holds no mark
    and its reflect-padded training crops are a mirror pattern of a few pixels. ``folder``, where the
    labels were read from, is named with them.
    """
    def named(label: CropLabel) -> str:
        return str(folder / label_file(label)) if folder is not None else label_file(label)

    problems = []
    small = [label for label in labels[:-1] if min(label.mask.shape) < MIN_TRAINING_SIDE_PX]
    if small:
        listed = "; ".join(f"label {named(label)} is {label.mask.shape[0]} x {label.mask.shape[1]} px (height x "
                           "width)" for label in small)
        problems.append(f"{listed}: a crop trained on needs at least {MIN_TRAINING_SIDE_PX} px on each side to hold "
                        "a mark; label a larger crop, or move it out of the labels folder")
    validating = labels[-1]
    role, advice = (("held out to validate both models: the last by name", "to hold out, named to sort last")
                    if len(labels) >= 2 else ("the only one, which validates both models too", "instead"))
    try:
        check_image_size(*validating.mask.shape, scale=1.0, name=f"label {named(validating)} ({role})",
                         advice=f"label a crop of at least {MIN_IMAGE_SIDE_PX} x {MIN_IMAGE_SIDE_PX} px {advice}")
    except InputError as exc:
        problems.append(str(exc))
    if problems:
        raise InputError("; ".join(problems))


def check_out_dir(out_dir: Path) -> None:
    """Raise InputError if ``out_dir`` cannot be the output folder (it, or a folder above it, is a file)."""
    out_dir = Path(out_dir)
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise InputError(f"output folder {out_dir}: {folder} is a file; give a folder for --out")
            return


def pseudo_label(
    image: np.ndarray,
    labels: list[CropLabel],
    *,
    out_dir: Path,
    config: PseudoConfig = PseudoConfig(),
    progress: Callable[[Iterable, int, str], Iterable] | None = None,
    config_checked: bool = False,
) -> PseudoResult:
    """Run the four steps on a normalised uint8 ``image``; writes models, masks and an overlay to ``out_dir``.

    ``config`` is checked first (:func:`check_config`, :func:`check_memory`: building both models'
    descriptions and sizing a training step of each) unless ``config_checked`` says the caller ran
    both on this same ``config`` already: the command line does, before it reads the image.

    Everything is made in a staging folder inside ``out_dir`` and moved into place only when all
    four steps succeeded: a failed run leaves the previous run's outputs as they were, never a mix
    of two runs, and no step reads a checkpoint this run did not write. ``out_dir``'s run lock
    (:mod:`am.dataset_lock`) is held meanwhile: a second run into the same folder is refused, naming
    this one, instead of removing this one's staging folder and outputs.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise InputError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    if not labels:
        raise InputError("pseudo-labelling needs at least one labelled crop")
    if not config_checked:
        check_config(config)
    check_crop_fits(image, config.crop)  # the image's own limit: more telling than the memory such a crop needs
    if not config_checked:
        check_memory(config)
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    crops = crops_from_labels(image, labels)
    check_label_sizes(labels)
    check_labels_have_marks(labels)
    check_held_out_apart(labels)
    check_labels_agree(labels)
    made = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    # One run at a time per --out: a second would remove this one's staging folder and its outputs.
    with dataset_lock(out_dir, command="am.pseudolabel", what="output folder"):
        try:
            with staging(out_dir / STAGING_NAME) as stage:
                summary, mask, known = _run(image, labels, crops, stage, config, progress)
                _move_into_place(stage, out_dir)
        except BaseException:
            # A first run that failed or was interrupted leaves no empty --out behind to be taken for a result.
            if made:
                _remove_if_empty(out_dir)
            raise
    return PseudoResult(mask=mask, known=known, small_model=out_dir / "small.pt", model=out_dir / "model.pt",
                        summary=summary)


def _remove_if_empty(out_dir: Path) -> None:
    """Remove ``out_dir`` if it holds nothing but the run lock's file (which is no output)."""
    if any(path.name != LOCK_NAME for path in out_dir.iterdir()):
        return
    (out_dir / LOCK_NAME).unlink(missing_ok=True)
    try:
        out_dir.rmdir()
    except OSError as exc:  # another run has just put its lock file there: the folder is its now
        log.debug("left %s in place: %s", out_dir, exc)


def _overlap(first: CropLabel, second: CropLabel) -> tuple[slice, slice] | None:
    """The image rows and columns two labelled crops both cover, or None where they share no pixel."""
    top, left = max(first.y, second.y), max(first.x, second.x)
    bottom = min(first.y + first.mask.shape[0], second.y + second.mask.shape[0])
    right = min(first.x + first.mask.shape[1], second.x + second.mask.shape[1])
    return (slice(top, bottom), slice(left, right)) if bottom > top and right > left else None


def _within(label: CropLabel, window: tuple[slice, slice]) -> np.ndarray:
    """The part of ``label``'s mask inside the image ``window``."""
    rows, cols = window
    return label.mask[rows.start - label.y : rows.stop - label.y, cols.start - label.x : cols.stop - label.x]


def check_held_out_apart(labels: list[CropLabel]) -> None:
    """Raise InputError where the crop held out (the last) shares pixels with a crop trained on: its
    figures would then score marks both models learnt, while the summary calls them held out."""
    if len(labels) < 2:
        return
    held = labels[-1]
    for other in labels[:-1]:
        if (window := _overlap(held, other)) is not None:
            share = _within(held, window).size / held.mask.size
            raise InputError(
                f"the held-out crop {label_file(held)} (the last by name) shares {100 * share:.0f} % of its pixels "
                f"with the crop {label_file(other)}, which both models train on, so its figures would not be "
                "held out: label crops that do not overlap"
            )


def check_labels_agree(labels: list[CropLabel]) -> None:
    """Raise InputError where two labelled crops overlap and disagree on more than
    :data:`LABEL_DISAGREEMENT` of the pixels they share: both would be learnt, and the one pasted
    last (by name) would silently decide the pseudo-labels there."""
    for index, first in enumerate(labels):
        for second in labels[index + 1:]:
            if (window := _overlap(first, second)) is None:
                continue
            a, b = _within(first, window) > 0, _within(second, window) > 0
            differ = float(np.mean(a != b))
            if differ > LABEL_DISAGREEMENT:
                height, width = a.shape
                raise InputError(
                    f"the crops {label_file(first)} and {label_file(second)} overlap on "
                    f"{width} x {height} px and disagree on {100 * differ:.1f} % of them (at most "
                    f"{100 * LABEL_DISAGREEMENT:g} % may differ); correct one "
                    "of them, or keep one"
                )


def _run(image: np.ndarray, labels: list[CropLabel], crops: list[Labelled], out_dir: Path, config: PseudoConfig,
         progress: Callable[[Iterable, int, str], Iterable] | None) -> tuple[dict, np.ndarray, np.ndarray]:
    """The four steps, writing every output to the (fresh, empty) folder ``out_dir``."""
    # With two or more crops the last is held out of both trainings, so choosing each model's best
    # epoch and the figures reported say how it does on marks it never learnt.
    if len(crops) >= 2:
        train_crops, valid_crops, held = crops[:-1], crops[-1:], labels[-1]
        log.info("holding out the crop at x %d, y %d to validate both models", held.x, held.y)
    else:
        train_crops, valid_crops, held = crops, crops, None
        log.warning("only one labelled crop: nothing is held out, so validation scores the crop both models "
                    "train on; label a second crop for an honest figure")
    base = _small_config(config, out_dir / "small.pt", crops=len(train_crops))
    log.info("step 1: training the small model on %d labelled crop(s)", len(train_crops))
    small_result = train(base, train_crops, valid_crops, progress=progress)
    _check_written(base.out, "small")

    log.info("step 2: predicting the whole %dx%d image", image.shape[1], image.shape[0])
    small = Predictor.from_checkpoint(base.out, device=base.device or None, tta=config.tta)
    proba = predict_image_proba(small, image, progress=progress)
    mask, known = confident_labels(proba, low=config.low, high=config.high, min_mark_px=config.min_mark_px)
    for crop, label in zip(crops, labels, strict=True):  # a person's labels beat the model's
        h, w = label.mask.shape
        mask[label.y : label.y + h, label.x : label.x + w] = crop.mask * 255
        known[label.y : label.y + h, label.x : label.x + w] = True
    write_png(out_dir / "pseudo_mask.png", mask)
    write_png(out_dir / "known.png", known.astype(np.uint8) * 255)
    write_png(out_dir / "overlay.png", _overlay(image, mask, known))
    log.info("step 3: %.1f%% of the image is confidently labelled, %d marks", 100 * known.mean(),
             cv2.connectedComponents((mask > 0).astype(np.uint8))[0] - 1)

    log.info("step 4: training the big model on the pseudo-labelled image")
    learn = known.copy()
    if held is not None:  # the held-out crop is not learnt from the whole image either
        h, w = held.mask.shape
        learn[held.y : held.y + h, held.x : held.x + w] = False
    whole = Labelled.from_arrays(image, mask, name="pseudo-labelled image", weight=learn.astype(np.uint8))
    big = _big_config(config, out_dir / "model.pt", crops=len(train_crops), known_fraction=float(known.mean()))
    result = train(big, [whole, *train_crops], valid_crops, progress=progress)
    _check_written(big.out, "big")
    validated_on = f"held-out crop at x {held.x}, y {held.y}" if held is not None else \
        "the one labelled crop, which both models trained on"
    summary = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
               "known_fraction": float(known.mean()),
               "validation": {"on": validated_on, "small_model": small_result.best_metrics,
                              "big_model": result.best_metrics}}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary, mask, known


def _check_written(checkpoint: Path, which: str) -> None:
    """Training keeps an epoch only when its validation score improves; with none kept there is no model to use."""
    if not checkpoint.is_file():
        raise CheckpointError(f"training the {which} model saved no checkpoint (no epoch had a usable validation "
                              "score); check the labels and train for more steps")


def _move_into_place(stage: Path, out_dir: Path) -> None:
    """Replace the previous run's outputs by this run's: summary.json goes first and comes back last, so a
    folder with a summary always holds the models and masks that summary describes. Only the files of
    :data:`OUTPUTS` are touched: the run lock's file and a person's own files stay."""
    (out_dir / "summary.json").unlink(missing_ok=True)
    made = {path.name for path in stage.iterdir()}
    for name in sorted(set(OUTPUTS) - made):  # an earlier run's file this run does not make
        (out_dir / name).unlink(missing_ok=True)
    for name in sorted(made - {"summary.json"}):
        os.replace(stage / name, out_dir / name)
    os.replace(stage / "summary.json", out_dir / "summary.json")
    log.info("wrote %s to %s", ", ".join(sorted(made)), out_dir)


def _overlay(image: np.ndarray, mask: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Image with pseudo-marks outlined in red and unknown pixels tinted blue, for a person to check."""
    rgb = np.repeat(image[:, :, None], 3, axis=2).astype(np.float32)
    rgb[~known] = rgb[~known] * 0.6 + np.array([0, 60, 160], dtype=np.float32)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (255, 40, 40), 1)
    return rgb
