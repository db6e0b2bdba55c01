"""Command line: ``python -m am.evaluate --model PATH (--data DIR | --synthetic N | --images DIR --masks DIR)``.

Prints Dice, IoU and object precision/recall/F1 (IoU >= 0.5 matching) per image and overall,
at the checkpoint's own threshold. ``--side-by-side DIR`` writes image | truth | prediction |
errors panels for a person to look at; the folder is replaced whole once every panel is written, so
a run stopped half-way leaves it as it was. Exit code 0 when the evaluation ran, whatever the scores.
Images of ``--images`` are named by their stems, or by their file names where two share a stem
(``a.png`` and ``a.tif``), so each keeps its own row, JSON entry and panel.
"""

from __future__ import annotations

# Loaded with the interpreter or the package already, so importing them leaves no time for a Ctrl-C;
# every other import is in the try below.
import logging

try:
    import argparse
    import json
    from collections import Counter
    from collections.abc import Iterator
    from contextlib import contextmanager
    from functools import partial
    from pathlib import Path

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from am.cli import (
        RERUN_TO_START_AGAIN,
        add_log_level_option,
        add_postprocess_option,
        add_precision_option,
        configure_logging,
        device_option,
        masks_label,
        output_problem,
        path_option,
        run_main,
        seed_option,
        threads_problem,
    )
    from am.dataset import png_conversion
    from am.errors import InputError
    from am.evaluate.heldout import HELD_OUT_PITCH, HELD_OUT_SEED, HELD_OUT_SIZE
    from am.evaluate.lost import LostMarks
    from am.evaluate.metrics import Scores
    from am.evaluate.run import ImageResult, evaluate, table
    from am.files import staging, swap_in, write_atomic
    from am.messages import TTA_MODES
    from am.model.checkpoint import checkpoint_argument, default_model_path
    from am.model.device import device_problem, resolve_device
    from am.model.precision import resolve_precision
    from am.model.predict import Predictor
    from am.model.whole import scale_problem
    from am.normalize import read_normalised
    from am.startup import hold_ctrl_c, run_command
    from am.synth.dataset import MAX_SYNTHETIC_SIZE, pitch_range_problem, synthetic_size_problem
    from am.train.data import (
        Labelled,
        check_pair_sizes,
        check_scorable_sizes,
        iter_synthetic_images,
        listed_images,
        missing_mask_note,
        pair_mask,
        read_mask,
        split_files,
        synthetic_name,
        unread_images,
    )

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.evaluate")

log = logging.getLogger(__name__)

# Left in every side-by-side folder this command writes: a folder holding it is an earlier run's
# panels, which a new run may replace whole; any other non-empty folder is someone's files.
PANELS_MARK = ".am-evaluate-panels"
# The most synthetic images one run scores: 250 times the held-out set, hours of work on a CPU.
MAX_SYNTHETIC = 10_000
# The largest --min-object-px: a component of a million pixels is far beyond any mark, so a larger
# value can only leave every mark out of the object counts.
MAX_MIN_OBJECT_PX = 1_000_000


def _model_option(text: str) -> Path:
    """The argparse type of ``--model``: a local checkpoint file, not empty (the current folder)."""
    return checkpoint_argument(str(path_option(text)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m am.evaluate", description=__doc__.split("\n\n")[1])
    p.add_argument("--model", type=_model_option, default=None,
                   help="checkpoint file (default: the shipped am/models/default.pt); download an s3:// model first")
    src = p.add_argument_group("labelled images (one or more sources)")
    src.add_argument("--data", type=path_option, default=None,
                     help="training root; evaluates its --split folder, images read as training reads them "
                          "(8-bit as stored, others stretched to 8 bits)")
    src.add_argument("--split", default="valid", choices=["train", "valid"], help="split of --data (default valid)")
    src.add_argument("--synthetic", type=int, default=None, metavar="N",
                     help=f"score N generated images, 0 (none) to {MAX_SYNTHETIC}; with the defaults below, the "
                          "first N of the synthetic held-out set the README's figures are measured on")
    src.add_argument("--seed", type=seed_option, default=HELD_OUT_SEED,
                     help=f"seed of the synthetic images (default {HELD_OUT_SEED}, the held-out set's)")
    src.add_argument("--size", type=int, default=HELD_OUT_SIZE,
                     help=f"side of the synthetic images, a multiple of 32 from 64 to {MAX_SYNTHETIC_SIZE} "
                          f"(default {HELD_OUT_SIZE})")
    src.add_argument("--pitch-min", type=float, default=HELD_OUT_PITCH[0],
                     help=f"smallest synthetic grid pitch in px (default {HELD_OUT_PITCH[0]:g})")
    src.add_argument("--pitch-max", type=float, default=HELD_OUT_PITCH[1],
                     help=f"largest synthetic grid pitch in px (default {HELD_OUT_PITCH[1]:g})")
    src.add_argument("--images", type=path_option, default=None,
                     help="folder of images (with --masks), normalised as the pipeline's input is (1-99 "
                          "percentile stretch): the figures a user of the pipeline gets")
    src.add_argument("--masks", type=path_option, default=None,
                     help="folder of 0/255 masks with the images' names (other masks are cut at half their "
                          "maximum, with a warning)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="resize images by this factor (0.05-20) before inference and back after (e.g. 2.04 for "
                        "half-size crops)")
    p.add_argument("--tta", choices=TTA_MODES, default="off",
                   help="test-time augmentation: average the tile and its half turn (rot180), 4 flipped (flips) or 8 "
                        "turned and mirrored (d4) views")
    add_postprocess_option(p)
    add_precision_option(p)
    p.add_argument("--min-object-px", type=int, default=0,
                   help=f"ignore components smaller than this in object counts, 0 to {MAX_MIN_OBJECT_PX} (default 0)")
    p.add_argument("--side-by-side", type=path_option, default=None,
                   help="write comparison PNGs to this folder, replacing it whole: a new or empty folder, or one "
                        "an earlier run wrote; never one holding or inside the inputs")
    p.add_argument("--json", type=path_option, default=None, help="also write the scores as JSON here")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = default)")
    p.add_argument("--device", type=device_option, default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available)")
    add_log_level_option(p, default="WARNING")
    return p


def image_mask_pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """Images and their same-named masks in two folders, paired before anything is read.

    The folder is listed as training lists a group's (:func:`am.train.data.listed_images`): hidden files
    (a Mac's ``._a.png``) are no images, and JPEG or other images that are not read are named, with how
    to convert them: alone, they are refused; beside readable images, warned of, since the scores would
    otherwise silently leave them out. Two images sharing a stem each need the mask of their own file name.
    """
    if not images.is_dir() or not masks.is_dir():
        raise InputError(f"--images {images} and --masks {masks} must both be folders")
    listed, others = listed_images(images)
    # A sub-folder named like an image (``b.png/``) is no image: it would fail only when read.
    sources = [path for path in listed if path.is_file()]
    if others and not sources:
        raise InputError(f"{images} holds only {unread_images(others)}, which am.evaluate does not read (only .png, "
                         f".tif and .tiff: lossless); convert each image and its mask, e.g. "
                         f"{png_conversion(others[0])}, and keep only the converted files there")
    if others:
        log.warning("%s in %s not scored (only .png, .tif and .tiff are read); convert each and its mask to score "
                    "it, e.g. %s", unread_images(others), images, png_conversion(others[0]))
    pairs = []
    for path in sources:
        mask_path = pair_mask(path, sources, masks)
        if mask_path is None:
            raise InputError(f"{path} has no mask of the same name in {masks}{missing_mask_note(path, sources, masks)}")
        pairs.append((path, mask_path))
    if not pairs:
        raise InputError(f"no images (.png, .tif or .tiff) in {images}")
    return pairs


def image_names(paths: list[Path]) -> list[str]:
    """A distinct name per image of one folder: its stem, or its whole file name where stems clash.

    ``a.png`` and ``a.tif`` would otherwise share one JSON entry and one side-by-side PNG; names
    stay plain stems wherever no other image claims the same one.
    """
    names = [path.stem for path in paths]
    while True:
        counts = Counter(names)
        clashing = [i for i, name in enumerate(names) if counts[name] > 1 and name != paths[i].name]
        if not clashing:
            return names
        for i in clashing:  # file names in one folder are distinct, so this ends
            names[i] = paths[i].name


def read_pair(image: Path, mask: Path, name: str | None = None) -> Labelled:
    """An image normalised like the pipeline's input, and its mask, named ``name`` (default: the image's stem)."""
    return Labelled.from_arrays(read_normalised(image), read_mask(mask), name=image.stem if name is None else name)


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The input folders given, as (option, resolved path): what no output may replace."""
    given = (("--images", args.images), ("--masks", args.masks), ("--data", args.data))
    return [(option, path.resolve()) for option, path in given if path is not None]


def overlap_problem(args: argparse.Namespace) -> str | None:
    """Why an output would overwrite an input, or None.

    The panel folder is replaced whole, so it may neither be an input folder, lie inside one, nor hold
    one; the JSON may be no input file (the checkpoint included) nor lie inside an input folder.
    """
    inputs = _inputs(args)
    if args.side_by_side is not None:
        out = args.side_by_side.resolve()
        for option, folder in inputs:
            if out == folder or folder in out.parents or out in folder.parents:
                return (f"--side-by-side {args.side_by_side} overlaps {option} {folder}: the panels would replace "
                        "the inputs; give a folder outside the inputs that holds none of them")
    if args.json is not None:
        out = args.json.resolve()
        model = (args.model or default_model_path()).resolve()
        if out == model:
            return f"--json {args.json} is the model file {model}; give another file name for the scores"
        for option, folder in inputs:
            if out == folder or folder in out.parents:
                return (f"--json {args.json} lies inside {option} {folder}, where it could overwrite an input; "
                        "give a file outside the inputs")
    return None


def panel_folder_problem(path: Path) -> str | None:
    """Why the panel folder ``path`` may not be replaced whole, or None: it holds files no earlier run wrote."""
    if path.is_dir() and any(path.iterdir()) and not (path / PANELS_MARK).is_file():
        return (f"--side-by-side {path} already holds files that are not panels of an earlier am.evaluate run "
                f"(no {PANELS_MARK} in it); the folder is replaced whole, so give a new or empty folder")
    return None


@contextmanager
def panel_folder(target: Path | None) -> Iterator[Path | None]:
    """A staging folder for this run's panels, swapped in for ``target`` only when the block succeeds.

    A run stopped or failing half-way leaves ``target`` as it was, and one that ends replaces it
    whole, so no panel of an earlier run stays among the new ones. None when no panels are asked for.
    """
    if target is None:
        yield None
        return
    target = target.resolve()
    with staging(target.with_name(f".{target.name}.partial")) as stage:
        panels = stage / target.name
        panels.mkdir()
        (panels / PANELS_MARK).write_text("side-by-side panels of python -m am.evaluate; replaced whole by a rerun\n")
        yield panels
        swap_in(panels, target)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    if (args.images is None) != (args.masks is None):
        p.error("--images and --masks go together")
    if args.images is not None and args.images.resolve() == args.masks.resolve():
        p.error("--images and --masks are the same folder; each image would be its own mask")
    if problem := threads_problem(args.threads):
        p.error(problem)
    if args.synthetic is not None and not 0 <= args.synthetic <= MAX_SYNTHETIC:
        p.error(f"--synthetic {args.synthetic} is not a number of images from 0 (none) to {MAX_SYNTHETIC}; give "
                "one (or leave --synthetic out)")
    given_none = args.synthetic == 0
    args.synthetic = args.synthetic or 0
    problem = device_problem(args.device) if args.device else None
    if problem is not None:
        p.error(f"--device {args.device}: {problem}")
    try:
        resolve_precision(args.precision, str(resolve_device(args.device)), warn=False)
    except InputError as exc:
        p.error(f"--precision {args.precision}: {exc}")
    if args.data is None and args.synthetic <= 0 and args.images is None:
        p.error("--synthetic 0 draws no images: give N of at least 1, --data or --images/--masks" if given_none
                else "give --data, --synthetic N or --images/--masks")
    if args.size % 32 or args.size < 64:
        p.error("--size must be a multiple of 32 and at least 64")
    if problem := synthetic_size_problem("--size", args.size):
        p.error(problem)
    if args.min_object_px < 0:
        p.error(f"--min-object-px {args.min_object_px}: give a size in px >= 0 (0 counts every component)")
    if args.min_object_px > MAX_MIN_OBJECT_PX:
        p.error(f"--min-object-px {args.min_object_px}: give a size in px of at most {MAX_MIN_OBJECT_PX}; a larger "
                "one would leave every mark out of the object counts (0 counts every component)")
    if problem := pitch_range_problem(args.pitch_min, args.pitch_max):
        p.error(problem)
    if problem := scale_problem(args.scale, name="--scale"):
        p.error(problem)  # before the model loads and the images are read
    if args.model is not None and not args.model.is_file():  # before minutes of reading or rendering images
        p.error(f"--model {args.model} " + ("is a folder" if args.model.is_dir() else "does not exist") +
                ": pass a checkpoint (.pt) file")
    for option, path, folder in (("--json", args.json, False), ("--side-by-side", args.side_by_side, True)):
        problem = None if path is None else output_problem(path, folder=folder)
        if problem is not None:
            p.error(f"{option}: {problem}")
    if problem := overlap_problem(args):
        p.error(problem)
    if args.side_by_side is not None and (problem := panel_folder_problem(args.side_by_side)):
        p.error(problem)
    return run_main(partial(_evaluate, args), name="am.evaluate", interrupted=RERUN_TO_START_AGAIN)


def uncounted_marks_warning(results: list[ImageResult], min_object_px: int) -> str | None:
    """What to say when the truth holds marks but ``--min-object-px`` left every one of them out of the
    object counts: precision, recall and F1 then read 1.0 on no marks at all, which is no score."""
    pooled = Scores.combine([r.scores for r in results])
    if min_object_px <= 0 or pooled.true_objects or not pooled.truth_px:
        return None
    return (f"--min-object-px {min_object_px} left every true mark out of the object counts (none is that large), "
            "so the object precision, recall and F1 above count no marks; give a smaller --min-object-px")


def _evaluate(args: argparse.Namespace) -> int:
    # Every source is found and paired first (a missing mask fails before any model work); images
    # are then read one at a time, so full-size labelled images are not all held at once.
    files = split_files(args.data, args.split) if args.data is not None else []
    pairs = image_mask_pairs(args.images, args.masks) if args.images is not None else []
    pair_names = image_names([image for image, _ in pairs])
    check_pair_sizes([(f.source, f.mask) for f in files] + pairs)
    check_scorable_sizes([f.source for f in files] + [image for image, _ in pairs], scale=args.scale)
    synthetic_names = [synthetic_name(args.seed, index) for index in range(max(args.synthetic, 0))]

    def items() -> Iterator[Labelled]:
        yield from (f.read() for f in files)
        yield from (read_pair(image, mask, name) for (image, mask), name in zip(pairs, pair_names, strict=True))
        yield from iter_synthetic_images(count=len(synthetic_names), size=args.size, seed=args.seed,
                                         pitch_range=(args.pitch_min, args.pitch_max))

    names = Counter([f.name for f in files] + pair_names + synthetic_names)
    repeated = sorted(name for name, count in names.items() if count > 1)
    if repeated:
        raise InputError(f"more than one image is named {', '.join(repeated)}; their scores would be reported "
                         "as one: give the images distinct names")

    total = len(files) + len(pairs) + len(synthetic_names)
    model = args.model or default_model_path()
    # The model is loaded (a file that is no checkpoint refused) before any image is read or rendered.
    predictor = Predictor.from_checkpoint(model, device=args.device, threads=args.threads, tta=args.tta,
                                          precision=args.precision, postprocess=args.postprocess == "on")
    with panel_folder(args.side_by_side) as panels, logging_redirect_tqdm():
        results = evaluate(predictor, items(), scale=args.scale, min_object_px=args.min_object_px,
                           side_by_side=panels, keep_predicted=False,
                           progress=lambda it: tqdm(it, desc="evaluate", unit="img", total=total))
    print(f"model {model} ({predictor.meta.encoder}, threshold {predictor.meta.threshold}, {predictor.precision}, "
          f"tta {args.tta}, {masks_label(predictor.postprocess)})")
    print(table(results))
    if uncounted := uncounted_marks_warning(results, args.min_object_px):
        log.warning("%s", uncounted)
    if args.side_by_side is not None:
        print(f"side-by-side panels of {len(results)} images in {args.side_by_side}")
    if args.json is not None:
        pooled = Scores.combine([r.scores for r in results])
        lost = LostMarks.combine([r.lost for r in results])
        write_atomic(args.json, json.dumps({"model": str(model), "tta": args.tta, "precision": predictor.precision,
                                            "overall": pooled.as_dict(),
                                            "lost": lost.as_dict(),
                                            "images": {r.name: {**r.scores.as_dict(), "lost": r.lost.as_dict()}
                                                       for r in results}}, indent=1).encode())
    return 0


if __name__ == "__main__":
    run_command(main, "am.evaluate", RERUN_TO_START_AGAIN)
