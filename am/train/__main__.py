r"""Command line: ``python -m am.train --out model.pt [--data DIR] [--synthetic N] ...``.

Trains an smp U-Net from folders in the original training layout
(``DIR/train|valid/<dataset>/<group>/{source,mask}/*.png``), from the synthetic generator, or
both. Writes the best epoch to ``--out`` (a checkpoint), beside it ``OUT.metrics.csv`` (one row
per epoch) and ``OUT.metrics.json`` (the run's summary), and, while a run is unfinished,
``OUT.resume`` (for ``--resume``); a ``.pt`` suffix of OUT is left out of these names. While it
runs it holds ``OUT.lock``, so that a second run with the same ``--out`` is refused. A new run
(no ``--resume``) refuses an ``--out`` where an earlier run's checkpoint, metrics or resume state
are, and any ``--out`` inside a ``--data`` folder: nothing it writes replaces a model or an input.

The shipped CPU default is trained by ``make model``: six runs of this command, the first from
scratch and each of the others from the previous one's weights (the ``model`` target of the
Makefile holds the exact options).

The production model on a GPU machine: the same command with a bigger encoder and budget::

    python -m am.train --synthetic 4000 --synthetic-size 512 --synthetic-valid 100 \
        --encoder resnext50_32x4d --decoder-channels 256,128,64,32,16 --crop 512 --batch-size 16 \
        --epochs 60 --steps-per-epoch 250 --lr 1e-3 --workers 8 --out model-resnext50.pt
"""

from __future__ import annotations

# Loaded with the interpreter or the package already, so importing them leaves no time for a Ctrl-C;
# every other import is in the try below.
import logging
import os
import sys

try:
    import argparse
    import math
    import shlex
    import time
    from dataclasses import dataclass
    from functools import partial
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from am.cli import (
        EXIT_INTERRUPTED,
        add_log_level_option,
        beyond_cpus_problem,
        channels_option,
        configure_logging,
        device_option,
        output_problem,
        path_option,
        run_main,
        seed_option,
        threads_problem,
    )
    from am.errors import CheckpointError, InputError
    from am.model.checkpoint import ModelMeta, architecture_problem, tile_size_problem
    from am.model.device import device_problem, resolve_device
    from am.model.masks import DEFAULT_MIN_MARK_FRACTION, DEFAULT_MIN_MARK_PX
    from am.model.separate import DEFAULT_SEED_THRESHOLD
    from am.settings import OptionError
    from am.startup import NOTHING_DONE, hold_ctrl_c, run_command
    from am.synth.dataset import MAX_SYNTHETIC_SIZE, pitch_range_problem, synthetic_size_problem
    from am.synth.render import POLARITIES, polarity_probabilities
    from am.synth.truth import LABELS
    from am.train.augment import MIN_SCALE
    from am.train.data import (
        LabelledFile,
        check_pair_sizes,
        check_scorable_sizes,
        check_trainable_sizes,
        read_pairs,
        split_files,
        synthetic_images,
        weigh_gaps,
    )
    from am.train.fits import GIB, free_memory, step_memory_problem
    from am.train.init import check_init
    from am.train.loop import (
        TrainConfig,
        TrainingDiverged,
        TrainResult,
        resume_options_problem,
        resume_problem,
        resume_without_training,
        train,
    )
    from am.train.progress import step_bar
    from am.train.runfiles import metrics_path, read_record, record_path, run_lock, run_outputs, state_path

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.train")

log = logging.getLogger("am.train")

# What a run holds of every image it trains or validates on, per pixel: the image, its mask and the loss weight.
HELD_BYTES_PER_PIXEL = 3
# The side of every synthetic validation image is at least this (whole images are validated, tiled).
MIN_SYNTHETIC_VALID_SIZE = 512


def _seed_threshold(text: str) -> float | None:
    """``off`` or a probability; its range against --threshold is checked once both are known."""
    if text.strip().lower() == "off":
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a probability or 'off', got {text!r}") from exc


def _polarity_mix(text: str) -> dict[str, float]:
    """``bright=1,rim=2`` -> relative weights; polarities left out are not drawn."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if name.strip() in mix:
            raise argparse.ArgumentTypeError(f"polarity {name.strip()!r} is given twice in {text!r}")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT pairs such as 'bright=1,rim=2', got {part!r}")
    try:
        polarity_probabilities(mix)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return mix


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m am.train", description=__doc__.split("\n\n")[1],
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]).replace("``", "'"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=path_option, required=True,
                   help="checkpoint to write (the best epoch); a new run refuses one where an earlier run's files "
                        "are (continue that run with --resume, or move them away) and one inside a --data folder")
    data = p.add_argument_group("data")
    data.add_argument("--data", type=path_option, action="append", default=[],
                      help="training root with train/ and valid/ folders (repeatable)")
    data.add_argument("--synthetic", type=int, default=0, help="synthetic training images to generate (default 0)")
    data.add_argument("--synthetic-valid", type=int, default=0,
                      help="synthetic validation images (default 0; needed when --data has no valid split)")
    data.add_argument("--synthetic-size", type=int, default=384,
                      help=f"side of each synthetic training image in px, 64-{MAX_SYNTHETIC_SIZE} (default 384); "
                           f"validation images are at least {MIN_SYNTHETIC_VALID_SIZE} px, larger sizes as given")
    data.add_argument("--synthetic-seed", type=seed_option, default=None,
                      help="generator seed (default: --seed); validation uses seed + 1000")
    data.add_argument("--pitch-min", type=float, default=20.0, help="smallest synthetic grid pitch in px")
    data.add_argument("--pitch-max", type=float, default=85.0, help="largest synthetic grid pitch in px")
    data.add_argument("--synthetic-labels", choices=LABELS, default="visible",
                      help="synthetic truth: visible (a mark's label reaches as far as the mark shows, "
                           "default), footprint (exactly the drawn pixels) or margin (the visible extent rounded up to "
                           "whole pixels, as the shipped model's earlier stages were trained)")
    data.add_argument("--synthetic-blobs", type=float, default=1.0,
                      help="multiply the out-of-focus bright blobs (not marks) of synthetic training images "
                           "(default 1; validation images keep the generator's rate)")
    data.add_argument("--synthetic-polarities", type=_polarity_mix, default=None, metavar="NAME=WEIGHT,...",
                      help="relative weights of the mark polarities (" + ", ".join(POLARITIES) + ") in synthetic "
                           "training images, e.g. 'bright=1,dark=1,rim=1,grey=1,flat=1' (default: the "
                           "generator's mix; validation images keep it)")
    data.add_argument("--gap-weight", type=int, default=1,
                      help="loss weight of the background between two close marks in training images "
                           "(default 1: no extra weight; 5 teaches a model to keep dense marks apart)")
    data.add_argument("--pixel-scale", type=float, default=1.0,
                      help="original px per training px, stored in the checkpoint (1.0 = full resolution)")
    model = p.add_argument_group("model")
    model.add_argument("--encoder", default="tu-mobilenetv3_large_100",
                       help="encoder name: resnext50_32x4d (production, GPU), tu-mobilenetv3_large_100 (CPU default)")
    model.add_argument("--encoder-depth", type=int, default=5, choices=[3, 4, 5],
                       help="encoder stages used (default 5, which trains every layer; with 3 or 4 the deeper "
                            "stages are built and saved but never run or trained)")
    model.add_argument("--decoder-channels", type=channels_option, default=(128, 64, 32, 16, 8),
                       help="comma-separated, one per encoder stage (default 128,64,32,16,8)")
    model.add_argument("--refine-channels", type=int, default=0,
                       help="width of a full-resolution branch that corrects the U-Net's logits from the image "
                            "itself (default 0: none; with --init of a plain U-Net it starts at zero, so the run "
                            "begins from that U-Net's exact output)")
    model.add_argument("--threshold", type=float, default=0.5, help="decision threshold stored in the checkpoint")
    model.add_argument("--seed-threshold", type=_seed_threshold, default=DEFAULT_SEED_THRESHOLD,
                       help="probability of the cores that split touching marks, stored in the checkpoint "
                            f"(between --threshold and 1; 'off' keeps masks merely thresholded; default "
                            f"{DEFAULT_SEED_THRESHOLD})")
    model.add_argument("--min-mark-px", type=int, default=DEFAULT_MIN_MARK_PX,
                       help="components smaller than this (model px) away from a tile's edge are specks, dropped "
                            f"from masks; stored in the checkpoint (0 keeps them; default {DEFAULT_MIN_MARK_PX})")
    model.add_argument("--min-mark-fraction", type=float, default=DEFAULT_MIN_MARK_FRACTION,
                       help="components smaller than this fraction of the median mark of their tile (away from its "
                            "edge) are specks too, dropped from masks; stored in the checkpoint (0 turns the rule "
                            f"off; default {DEFAULT_MIN_MARK_FRACTION})")
    model.add_argument("--tile-size", type=int, default=512, help="tile size the model is meant for")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=20, help="epochs; each validates and may keep the best")
    opt.add_argument("--steps-per-epoch", type=int, default=100, help="optimiser steps (batches) per epoch")
    opt.add_argument("--batch-size", type=int, default=8, help="crops per step")
    opt.add_argument("--crop", type=int, default=256, help="training crop side in px (multiple of 32)")
    opt.add_argument("--scale-min", type=float, default=0.7,
                     help=f"smallest zoom of a crop (scale augmentation; default 0.7, at least {MIN_SCALE:g})")
    opt.add_argument("--scale-max", type=float, default=1.4, help="largest zoom of a crop")
    opt.add_argument("--low-resolution", type=float, default=0.0, metavar="P",
                     help="probability that a training crop is shrunk 1.5-2.5 times and enlarged back, as images "
                          "taken at a lower magnification reach the model through --scale (default 0)")
    opt.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    opt.add_argument("--refine-lr", type=float, default=None,
                     help="peak learning rate of the --refine-channels branch (default: --lr)")
    opt.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    opt.add_argument("--warmup-steps", type=int, default=100,
                     help="linear warm-up steps before the cosine decay")
    opt.add_argument("--seed", type=seed_option, default=0,
                     help="seed of weights, crops and (by default) the generator")
    run = p.add_argument_group("run")
    run.add_argument("--device", type=device_option, help="cpu or cuda (default: cuda when available)")
    run.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    run.add_argument("--workers", type=int, default=0,
                     help="data loader processes, which also render the synthetic images, at most this machine's "
                          f"CPUs ({os.cpu_count()} here) (default 0: in process)")
    storage = run.add_mutually_exclusive_group()
    storage.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16, half the file)")
    storage.add_argument("--int8", action="store_true",
                         help="store convolution weights as int8 with a scale per output channel, the rest as "
                              "fp16: about half an fp16 file, so an encoder of up to about 14 M parameters "
                              "fits the 15 MB a shipped model may weigh")
    run.add_argument("--resume", action="store_true",
                     help="continue the run whose state OUT.resume holds, with the options it was started with "
                          "(--epochs may change, not below the epochs already done); an error when there is none. "
                          "The state keeps a copy of the best epoch's checkpoint: an OUT moved away or replaced "
                          "since is written again from it")
    run.add_argument("--init", type=path_option, default=None, metavar="CHECKPOINT",
                     help="start from this checkpoint's weights (same architecture; optimiser and schedule "
                          "start afresh)")
    run.add_argument("--init-partial", action="store_true",
                     help="with --init: allow other --decoder-channels. A decoder with no stage narrower "
                          "starts computing exactly what the checkpoint computes, its new channels random "
                          "and unconnected; otherwise every tensor whose shape fits is kept (the encoder and "
                          "the decoder stages left as they were) and the rest starts afresh")
    run.add_argument("--keep-state", action="store_true",
                     help="keep OUT.resume after the last epoch (default: delete it, it is large)")
    run.add_argument("--max-minutes", type=float, default=0.0, help="stop after the epoch that passes this limit")
    add_log_level_option(run)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    problem = device_problem(args.device) if args.device else None
    if problem is not None:
        p.error(f"--device {args.device}: {problem}")
    if args.resume and (problem := resume_problem(args.out)) is not None:
        p.error(problem)  # before minutes of reading and rendering images
    if args.synthetic < 0:
        p.error(f"--synthetic {args.synthetic} must be >= 0")
    if not args.data and args.synthetic <= 0:
        p.error("give --data DIR and/or --synthetic N")
    if args.epochs < 1 or args.steps_per_epoch < 1 or args.batch_size < 1:
        p.error("--epochs, --steps-per-epoch and --batch-size must be >= 1")
    if args.crop < 64 or args.crop % 32 or args.synthetic_size % 32:
        p.error("--crop and --synthetic-size must be multiples of 32 (crop at least 64)")
    if len(args.decoder_channels) != args.encoder_depth:
        p.error(f"--decoder-channels needs {args.encoder_depth} values, one per encoder stage")
    if not 0 <= args.refine_channels <= 256:
        p.error(f"--refine-channels {args.refine_channels} must lie in 0-256 (0: no refinement)")
    if args.refine_lr is not None and not (math.isfinite(args.refine_lr) and args.refine_lr > 0
                                           and args.refine_channels > 0):
        p.error(f"--refine-lr {args.refine_lr} needs --refine-channels and must be a finite number > 0")
    if problem := tile_size_problem(args.tile_size, name="--tile-size"):
        p.error(problem)
    architecture = dict(encoder=args.encoder, encoder_depth=args.encoder_depth,
                        decoder_channels=tuple(args.decoder_channels), refine_channels=args.refine_channels,
                        tile_size=args.tile_size)
    if problem := architecture_problem(**architecture,
                                       input_sizes={"--tile-size": args.tile_size, "--crop": args.crop}):
        p.error(f"--encoder/--encoder-depth/--decoder-channels: {problem}")  # before rendering or reading images
    if problem := step_memory_problem(ModelMeta(**architecture), batch_size=args.batch_size, crop=args.crop,
                                      device=resolve_device(args.device or None)):
        p.error(problem)
    if args.init_partial and args.init is None:
        p.error("--init-partial needs --init CHECKPOINT")
    if not (math.isfinite(args.synthetic_blobs) and args.synthetic_blobs >= 0):
        p.error(f"--synthetic-blobs {args.synthetic_blobs} must be a finite number >= 0 (1: the generator's rate)")
    if not 1 <= args.gap_weight <= 255:
        p.error("--gap-weight must be between 1 and 255")
    if not (0 < args.scale_min <= args.scale_max and math.isfinite(args.scale_max)):
        p.error(f"--scale-min {args.scale_min} and --scale-max {args.scale_max} must be finite, > 0, with min <= max")
    if args.scale_min < MIN_SCALE:
        p.error(f"--scale-min {args.scale_min:g} is below {MIN_SCALE:g}: a crop zoomed out that far reads a window of "
                f"{args.crop / args.scale_min:.0f} px a side to shrink to --crop {args.crop}; give --scale-min "
                f"{MIN_SCALE:g} or more (default 0.7)")
    if problem := pitch_range_problem(args.pitch_min, args.pitch_max):
        p.error(problem)
    if args.synthetic > 0 and args.synthetic_size < 64:
        p.error(f"--synthetic-size {args.synthetic_size} must be at least 64")
    if (args.synthetic > 0 or args.synthetic_valid > 0) and (
            problem := synthetic_size_problem("--synthetic-size", args.synthetic_size)):
        p.error(problem)
    if problem := _synthetic_memory_problem(args):
        p.error(problem)
    if args.synthetic_valid < 0:
        p.error(f"--synthetic-valid {args.synthetic_valid} must be >= 0")
    for option, value in (("--lr", args.lr), ("--pixel-scale", args.pixel_scale)):
        if not (math.isfinite(value) and value > 0):
            p.error(f"{option} {value} must be a finite number > 0")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        p.error(f"--weight-decay {args.weight_decay} must be a finite number >= 0")
    if not (math.isfinite(args.max_minutes) and args.max_minutes >= 0):
        p.error(f"--max-minutes {args.max_minutes} must be a finite number >= 0 (0: no limit)")
    for option, value in (("--warmup-steps", args.warmup_steps), ("--threads", args.threads),
                          ("--workers", args.workers)):
        if value < 0:
            p.error(f"{option} {value} must be >= 0")
    if problem := threads_problem(args.threads):
        p.error(problem)
    if problem := beyond_cpus_problem(args.workers, option="--workers", zero_means="in process"):
        p.error(problem)  # each loader process holds hundreds of MB
    if problem := output_problem(args.out, folder=False):
        p.error(f"--out: {problem}")  # before minutes of reading, rendering and a first epoch
    if problem := inside_data_problem(args.out, args.data):
        p.error(problem)
    if not 0 <= args.low_resolution <= 1:
        p.error(f"--low-resolution {args.low_resolution} is a probability: it must lie in [0, 1]")
    if not 0 < args.threshold < 1:
        p.error(f"--threshold {args.threshold} must lie strictly between 0 and 1")
    if args.seed_threshold is not None and not args.threshold < args.seed_threshold < 1:
        p.error(f"--seed-threshold {args.seed_threshold} must lie between --threshold {args.threshold} and 1, "
                "or be 'off'")
    if args.min_mark_px < 0:
        p.error(f"--min-mark-px {args.min_mark_px} must be >= 0 (0 keeps specks)")
    if not 0 <= args.min_mark_fraction < 1:
        p.error(f"--min-mark-fraction {args.min_mark_fraction} must lie in [0, 1) (0 turns the rule off)")
    # Before minutes of reading and rendering images; a resumed run's weights come from its state.
    if args.init is not None and not args.resume and (problem := _init_problem(args)) is not None:
        p.error(problem)
    if not (args.synthetic or args.synthetic_valid) and (unused := _unused_synthetic_options(p, args)):
        log.warning("%s shape synthetic images, and this run renders none (no --synthetic or --synthetic-valid): "
                    "they have no effect", ", ".join(unused))
    return run_main(partial(_check_data_then_train, args, argv), name="am.train")


def _synthetic_memory_problem(args: argparse.Namespace) -> str | None:
    """Why the synthetic images cannot all be held in this machine's free memory, or None.

    They are rendered up front and held for the whole run, so too many or too large ones do not fail
    at once: the kernel ends the run after minutes of rendering. Only the bytes certainly held are
    counted (:data:`HELD_BYTES_PER_PIXEL`), so a refusal is certain.
    """
    held = HELD_BYTES_PER_PIXEL * (args.synthetic * args.synthetic_size ** 2 + args.synthetic_valid
                                   * max(args.synthetic_size, MIN_SYNTHETIC_VALID_SIZE) ** 2)
    free = free_memory(torch.device("cpu"))
    if free is None or held <= free:
        return None
    return (f"--synthetic {args.synthetic} and --synthetic-valid {args.synthetic_valid} images of "
            f"--synthetic-size {args.synthetic_size} px (validation images at least {MIN_SYNTHETIC_VALID_SIZE} px) "
            f"hold at least {held / GIB:.1f} GiB in memory, and this machine has {free / GIB:.1f} GiB free; "
            "give fewer or smaller synthetic images")


# Options that only change the synthetic images a run renders.
SYNTHETIC_OPTIONS = ("synthetic_size", "synthetic_seed", "pitch_min", "pitch_max", "synthetic_labels",
                     "synthetic_blobs", "synthetic_polarities")


def _unused_synthetic_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The synthetic-only options given other values than their defaults, as the user spelt them."""
    return [f"--{name.replace('_', '-')}" for name in SYNTHETIC_OPTIONS
            if getattr(args, name) != parser.get_default(name)]


def _check_data_then_train(args: argparse.Namespace, argv: list[str]) -> int:
    """Train, holding the lock of ``--out`` throughout: a second run writing the same files is refused
    at once (exit 1), before either reads a state the other is rewriting; so is a new run (no
    --resume) where an earlier run's files are (exit 2)."""
    with run_lock(args.out):
        listed = _listed_data(args)  # bad input, exit 1: before any image is read or rendered
        if not args.resume and (problem := earlier_run_problem(args.out)) is not None:
            # Before any image is read too; under the lock, so that a run writing --out right now is refused
            # as that, not as an earlier run to resume.
            raise OptionError(problem)
        # Built once, here: the resume check and the training then see one and the same configuration.
        config = _config(args, listed)
        if args.resume and (problem := resume_options_problem(config)) is not None:
            raise CheckpointError(problem)  # the same: a resume of another run is refused before minutes of reading
        if (finished := resume_without_training(config)) is not None:
            return _nothing_to_train(finished)  # nor is the data read for a run with no epoch left to train
        return _train_until_interrupted(args, argv, listed, config)


@dataclass(frozen=True)
class _Listed:
    """The image/mask pairs of one split of one --data root, listed but not read."""

    root: Path
    split: str
    files: list[LabelledFile]


def _listed_data(args: argparse.Namespace) -> list[_Listed]:
    """Every --data pair, listed once, each mask's size checked against its image's from the headers,
    and the validation set known to exist: found before any image is read or rendered (InputError)."""
    roots = data_folders(args.data)
    if len(set(roots)) < len(roots):
        twice = sorted({r for r in roots if roots.count(r) > 1})
        raise InputError(f"--data {', '.join(twice)} given more than once: each image would count twice")
    listed = [_Listed(root, split, split_files(root, split)) for root in args.data
              for split in ("train", *(["valid"] if (root / "valid").is_dir() else []))]
    check_pair_sizes((f.source, f.mask) for part in listed for f in part.files)
    check_scorable_sizes(f.source for part in listed if part.split == "valid" for f in part.files)
    check_trainable_sizes(f.source for part in listed if part.split == "train" for f in part.files)
    if args.synthetic_valid <= 0 and not any(part.split == "valid" for part in listed):
        raise InputError("training needs validation images: a valid/ split in a --data root, or --synthetic-valid N")
    return listed


def inside_data_problem(out: Path, data: list[Path]) -> str | None:
    """Why ``out``, or a file a run writes beside it, would lie inside (or be) a ``--data`` root, or None.

    The run would write its checkpoint over a training image of that name, and its metrics and
    resume files among the training data, and say nothing (an ``--out`` naming an image is one
    typo away from a path in the data). Compared resolved, so that no spelling or link hides it.
    """
    roots = [(folder, Path(folder).resolve()) for folder in data]
    for written in run_outputs(out):
        target = Path(written).resolve()
        for folder, root in roots:
            if target == root or root in target.parents:
                what = f"--out {out}" if written == Path(out) else f"--out {out} would write {written}, which"
                return (f"{what} lies inside --data {folder}, where it could overwrite a training file and would "
                        "put the run's files among the data; give an --out outside the --data folders")
    return None


def earlier_run_problem(out: Path) -> str | None:
    """Why a new run (no --resume) may not write ``out``, or None: files of an earlier run are there.

    A new run replaces the checkpoint, the metrics and the resume state at its first epoch, so a
    finished model, or a stopped run that --resume would have continued, would be lost without a
    word. The run is refused instead, saying what is there and the ways on; there is deliberately
    no option to overwrite: moving or deleting the files is as quick and cannot happen by accident.
    """
    found = [path for path in run_outputs(out) if os.path.lexists(path)]
    if not found:
        return None
    them = "it" if len(found) == 1 else "them"
    said = (f"--out {out}: {', '.join(map(str, found))} already exist{'s' if len(found) == 1 else ''}, and a new "
            f"run would replace {them} at its first epoch")
    record = read_record(out) if record_path(out) in found else None
    if state_path(out) in found:
        way = "to continue that earlier run, add --resume; "
    elif record is not None and record.get("finished") and Path(out) in found:
        epochs = len(record["history"])
        way = (f"that earlier run finished its {epochs} epoch{'s' if epochs != 1 else ''}: to train on from its "
               f"weights, give --init {out} and another --out; ")
    else:
        way = ""
    return f"{said}; {way}to start afresh, give another --out, or move or delete {them} first"


def _init_problem(args: argparse.Namespace) -> str | None:
    """Why the --init checkpoint cannot start this run (another architecture, no checkpoint), or None."""
    try:
        meta = ModelMeta(encoder=args.encoder, encoder_depth=args.encoder_depth,
                         decoder_channels=tuple(args.decoder_channels), refine_channels=args.refine_channels)
        check_init(meta, args.init, partial=args.init_partial)
    except (CheckpointError, InputError) as exc:
        return str(exc)
    return None


def _train_until_interrupted(args: argparse.Namespace, argv: list[str], listed: list[_Listed] | None = None,
                             config: TrainConfig | None = None) -> int:
    """Train; on Ctrl-C or SIGTERM say exactly how to go on, since rerunning without --resume starts over.

    ``listed`` and ``config`` are those :func:`_check_data_then_train` made (None: made here)."""
    state = state_path(args.out)
    # Compared by identity, not by time: a file's mtime comes from a coarser clock than time.time() and
    # can read earlier than a moment taken before it was written.
    before = {path: _identity(path) for path in run_outputs(args.out)}
    earlier = before[state]
    if earlier is not None and not args.resume:  # main() refuses such an --out first (earlier_run_problem)
        log.warning("%s holds the epochs of an earlier run; this run starts afresh and replaces it at its first "
                    "epoch (to continue that run instead, stop now and add --resume)", state)
    try:
        return _train(args, listed, config)
    except KeyboardInterrupt:
        # A fresh run's state is its own only once it wrote one; an older file is another run's.
        ours = state.is_file() and (args.resume or _identity(state) != earlier)
        if ours:
            log.error("interrupted; the finished epochs are kept in %s. To continue from there, run: %s", state,
                      resume_command(argv, resuming=args.resume))
        elif begun := [path for path in run_outputs(args.out) if _identity(path) not in (None, before[path])]:
            # Stopped while its first epoch was being saved: a rerun refuses an --out holding these.
            log.error("interrupted while the first epoch was being saved, so there is nothing of this run to resume; "
                      "move or delete what it had written (%s), then rerun the same command to start again",
                      ", ".join(map(str, begun)))
        else:
            log.error("interrupted before an epoch finished, so there is nothing of this run to resume%s; rerun "
                      "the same command to start again",
                      f" ({state} holds an earlier run's epochs)" if state.is_file() else "")
        return EXIT_INTERRUPTED
    except Exception as exc:
        # A full disk, a diverged run, a damaged file: the error itself is reported by run_main, whose advice,
        # to rerun the same command, a rerun would refuse while this run's files are in --out.
        _after_failure(args, argv, exc, state=state, earlier=earlier, before=before)
        raise


def _after_failure(args: argparse.Namespace, argv: list[str], exc: Exception, *, state: Path,
                   earlier: tuple[int, int, int] | None, before: dict[Path, tuple[int, int, int] | None]) -> None:
    """Leave --out so that the way to go on after a failed run works: its finished epochs resumable (the
    command said), or, where none finished saving, none of its files left to make a rerun refuse --out."""
    if state.is_file() and (args.resume or _identity(state) != earlier):
        if isinstance(exc, TrainingDiverged):  # resumed, the same steps would diverge again
            kept = [str(path) for path in run_outputs(args.out) if path.is_file()]
            log.warning("the best epoch before it diverged is kept in %s; to start again, give another --out or move "
                      "this run's files aside (%s)", args.out, ", ".join(kept))
        else:
            log.warning("the finished epochs are kept in %s; once the cause below is fixed, continue with: %s", state,
                      resume_command(argv, resuming=args.resume))
        return
    begun = [path for path in run_outputs(args.out) if _identity(path) not in (None, before[path])]
    own = [path for path in begun if before[path] is None]
    for path in own:
        path.unlink(missing_ok=True)
    if own:
        log.warning("no epoch of this run finished saving: removed what it had written (%s), so that the same command "
                  "starts afresh once the cause below is fixed", ", ".join(map(str, own)))


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells one write of ``path`` from another (the state is replaced whole, so its inode changes)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def resume_command(argv: list[str], *, resuming: bool) -> str:
    """The command line that continues the run ``argv`` started: the same options with --resume, its
    paths (--out, --data, --init) made absolute so that it works from any directory."""
    return shlex.join(["python", "-m", "am.train", *_absolute_paths(argv), *([] if resuming else ["--resume"])])


def _absolute_paths(argv: list[str]) -> list[str]:
    """``argv`` with the value of every path option absolute (``--out m.pt`` and ``--out=m.pt`` alike,
    and the abbreviations argparse accepts)."""
    actions = parser()._actions
    options = [o for action in actions for o in action.option_strings]
    paths = {o for action in actions if action.type in (Path, path_option) for o in action.option_strings}

    def takes_path(word: str) -> bool:
        if not word.startswith("--"):
            return False
        named = [word] if word in options else [o for o in options if o.startswith(word)]
        return len(named) == 1 and named[0] in paths

    out, expect_path = [], False
    for word in argv:
        if expect_path:
            out.append(os.path.abspath(word))
            expect_path = False
        elif "=" in word and takes_path(word.split("=", 1)[0]):
            option, value = word.split("=", 1)
            out.append(f"{option}={os.path.abspath(value)}")
        else:
            expect_path = takes_path(word)
            out.append(word)
    return out


def data_folders(folders: list[Path]) -> list[str]:
    """The --data folders as the run records them: resolved, so that a resume names the same folder
    however it is spelled (relative or absolute, from any directory)."""
    return [str(Path(d).resolve()) for d in folders]


def _config(args: argparse.Namespace, listed: list[_Listed]) -> TrainConfig:
    """The run's configuration, its data summary counted from the listed files and the options alone,
    so that it exists (and a resume can be checked against it) before any image is read or rendered."""
    synth_seed = args.seed if args.synthetic_seed is None else args.synthetic_seed
    counted = {split: sum(len(part.files) for part in listed if part.split == split) for split in ("train", "valid")}
    summary = {"folders": data_folders(args.data), "train_images": counted["train"] + args.synthetic,
               "valid_images": counted["valid"] + args.synthetic_valid, "synthetic": args.synthetic,
               "synthetic_valid": args.synthetic_valid, "synthetic_size": args.synthetic_size,
               "synthetic_seed": synth_seed, "pitch_range": [args.pitch_min, args.pitch_max],
               "synthetic_labels": args.synthetic_labels, "synthetic_blobs": args.synthetic_blobs,
               "synthetic_polarities": args.synthetic_polarities, "gap_weight": args.gap_weight}
    return TrainConfig(
        out=args.out, encoder=args.encoder, encoder_depth=args.encoder_depth,
        decoder_channels=args.decoder_channels, refine_channels=args.refine_channels,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size, crop=args.crop, scale=(args.scale_min, args.scale_max),
        low_resolution=args.low_resolution, lr=args.lr, refine_lr=args.refine_lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, threshold=args.threshold,
        seed_threshold=args.seed_threshold, min_mark_px=args.min_mark_px,
        min_mark_fraction=args.min_mark_fraction,
        tile_size=args.tile_size, pixel_scale=args.pixel_scale, seed=args.seed, device=args.device or "",
        threads=args.threads, workers=args.workers, half=not args.fp32, int8=args.int8,
        resume=args.resume,
        keep_state=args.keep_state, max_minutes=args.max_minutes, init=args.init,
        init_partial=args.init_partial, data_summary=summary,
    )


def _train(args: argparse.Namespace, listed: list[_Listed] | None = None, config: TrainConfig | None = None) -> int:
    started = time.perf_counter()
    listed = _listed_data(args) if listed is None else listed
    config = _config(args, listed) if config is None else config
    synth_seed, pitch = config.data_summary["synthetic_seed"], (args.pitch_min, args.pitch_max)
    train_items, valid_items = [], []
    for part in listed:
        items = read_pairs(part.files, where=part.root / part.split)
        (train_items if part.split == "train" else valid_items).extend(items)
    if args.synthetic > 0:
        train_items += synthetic_images(count=args.synthetic, size=args.synthetic_size, seed=synth_seed,
                                        pitch_range=pitch, labels=args.synthetic_labels,
                                        blob_rate=args.synthetic_blobs, polarity_mix=args.synthetic_polarities,
                                        workers=args.workers,
                                        progress=lambda it: tqdm(it, total=args.synthetic, desc="synthetic"))
    if args.synthetic_valid > 0:
        valid_items += synthetic_images(count=args.synthetic_valid,
                                        size=max(args.synthetic_size, MIN_SYNTHETIC_VALID_SIZE),
                                        seed=synth_seed + 1000, pitch_range=pitch, labels=args.synthetic_labels,
                                        workers=args.workers)
    train_items = [weigh_gaps(item, args.gap_weight) for item in train_items]
    result = train(config, train_items, valid_items, progress=step_bar)
    best = result.best_metrics
    if result.epochs_run == 0:
        return _nothing_to_train(result)
    # A resumed run whose epochs all scored below an earlier one's wrote no checkpoint: it says so.
    if result.best_epoch > len(result.history) - result.epochs_run:
        wrote = f"wrote {result.checkpoint} and {metrics_path(args.out)}"
    else:
        wrote = f"{result.checkpoint} holds it (saved before this resume); wrote {metrics_path(args.out)}"
    print(f"best epoch {result.best_epoch}: dice {best.get('dice', 0):.4f} iou {best.get('iou', 0):.4f} "
          f"object F1 {best.get('f1', 0):.4f}; {wrote} in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def _nothing_to_train(result: TrainResult) -> int:
    best = result.best_metrics
    print(f"nothing to train: {result.checkpoint} holds the finished run of {len(result.history)} epochs "
          f"(best epoch {result.best_epoch}: dice {best.get('dice', 0):.4f} object F1 {best.get('f1', 0):.4f})")
    return 0


if __name__ == "__main__":
    run_command(main, "am.train", NOTHING_DONE)
