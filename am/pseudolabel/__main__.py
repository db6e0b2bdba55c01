"""Command line: ``python -m am.pseudolabel IMAGE --labels DIR --out DIR``.

IMAGE is one large microscopy image (any bit depth; it is normalised like the pipeline's input).
The ``--labels`` folder holds a few 0/255 masks named ``X_Y.png`` (or ``.tif``, ``.tiff``): each labels the region
of IMAGE whose top-left pixel is column X, row Y, and has the size of the mask. The command trains a small regularised
model on those crops, predicts the whole image, keeps the confident pixels, trains a bigger
model on the result and writes to ``--out``: ``pseudo_mask.png``, ``known.png`` (where the
pseudo-labels are trusted), ``overlay.png`` (for a person to check), ``small.pt``, ``model.pt``
and ``summary.json``. They replace an earlier run's only once all four steps succeeded: a run
that fails leaves ``--out`` as it was. One run at a time writes to ``--out`` (it holds the folder's
lock): a second is refused at once, naming the first.
"""

from __future__ import annotations

# Every import is in the try below, so that a Ctrl-C while one loads is reported in one line.
try:
    import argparse
    import re
    from functools import partial
    from pathlib import Path

    from am.cli import (
        RERUN_TO_START_AGAIN,
        add_log_level_option,
        configure_logging,
        path_option,
        run_main,
        seed_option,
        threads_problem,
    )
    from am.dataset import OTHER_IMAGE_KINDS, png_conversion
    from am.errors import InputError
    from am.messages import TTA_MODES
    from am.normalize import read_normalised
    from am.pseudolabel.core import (
        CropLabel,
        PseudoConfig,
        check_config,
        check_label_sizes,
        check_memory,
        check_out_dir,
        pseudo_label,
    )
    from am.startup import hold_ctrl_c, run_command
    from am.train.data import IMAGE_SUFFIXES, read_mask
    from am.train.progress import step_bar

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.pseudolabel")

# A label's name without its suffix: the column and row of its top-left pixel in the image.
LABEL_STEM = re.compile(r"^(\d+)_(\d+)$")


def read_labels(folder: Path) -> list[CropLabel]:
    """The X_Y masks of ``folder``, sorted by name (the last is held out).

    Every image file there is meant as a label, so one whose name does not give its place, or in a
    format masks are not read from (JPEG's rounding moves a mark's edge), is refused rather than
    left out unnoticed. Hidden files (a Mac's ``._0_0.png`` beside each copied label) are no labels.
    A crop too small for its part (:func:`~am.pseudolabel.core.check_label_sizes`) is refused here, by its
    path, before the large image is read.
    """
    if folder.is_file():
        raise InputError(f"--labels {folder} is a file, not a folder: give the folder holding the X_Y.png masks")
    if not folder.is_dir():
        raise InputError(f"labels folder {folder} does not exist")
    labels = []
    placed: dict[tuple[int, int], Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() in OTHER_IMAGE_KINDS:
            raise InputError(f"label {path} is {OTHER_IMAGE_KINDS[path.suffix.lower()]}, which masks are not read "
                             f"from (only .png, .tif and .tiff: lossless); convert it, e.g. {png_conversion(path)}, "
                             "and keep only the converted file there")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        match = LABEL_STEM.match(path.stem)
        if match is None:
            raise InputError(f"label {path} must be named X_Y{path.suffix} (its top-left column and row in the "
                             "image, such as 0_0.png); rename it, or move it out of the labels folder")
        x, y = int(match.group(1)), int(match.group(2))
        if (x, y) in placed:
            # Both would be learnt and one pasted over the other: which counts would depend on the names.
            raise InputError(f"labels {placed[x, y].name} and {path.name} in {folder} both start at column {x}, "
                             f"row {y}; keep one")
        placed[x, y] = path
        mask = read_mask(path)  # read as training and evaluation read masks
        labels.append(CropLabel(x=x, y=y, mask=mask.astype("uint8") * 255, name=path.name))
    if not labels:
        raise InputError(f"no X_Y.png labels (or .tif, .tiff) in {folder}")
    check_label_sizes(labels, folder=folder)  # before the image is read, not after the first epoch
    return labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m am.pseudolabel", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", type=path_option, help="the large image")
    p.add_argument("--labels", type=path_option, required=True, help="folder of X_Y.png (or .tif, .tiff) crop masks")
    p.add_argument("--out", type=path_option, required=True, help="output folder")
    defaults = PseudoConfig()
    p.add_argument("--small-encoder", default=defaults.small_encoder,
                   help="encoder of the small model trained on the labelled crops (step 1; default %(default)s)")
    p.add_argument("--big-encoder", default=defaults.big_encoder,
                   help="encoder of the model trained on the pseudo-labels (step 4; default %(default)s, "
                        "resnext50_32x4d for production on a GPU)")
    p.add_argument("--small-epochs", type=int, default=defaults.small_epochs,
                   help="epochs of the small model (default %(default)s)")
    p.add_argument("--big-epochs", type=int, default=defaults.big_epochs,
                   help="epochs of the bigger model (default %(default)s)")
    p.add_argument("--steps-per-epoch", type=int, default=defaults.steps_per_epoch,
                   help="training steps per epoch, each a batch of fresh random crops (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help="crops per training step (default %(default)s)")
    p.add_argument("--crop", type=int, default=defaults.crop,
                   help="training crop side, a multiple of 32, at least 64 and at most the image's smaller side "
                        "(default %(default)s)")
    p.add_argument("--low", type=float, default=defaults.low,
                   help="probability at or below which a pixel is background (default %(default)s)")
    p.add_argument("--high", type=float, default=defaults.high,
                   help="probability at or above which a pixel is a mark (default %(default)s)")
    p.add_argument("--tta", choices=TTA_MODES, default=defaults.tta,
                   help="average the small model's answer over 2 (rot180), 4 (flips) or 8 (d4) views in step 2 "
                        "(default off)")
    p.add_argument("--seed", type=seed_option, default=0,
                   help="seed of the models' initialisation and of the crops drawn (default %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch, at most this machine's CPUs (0 = default)")
    add_log_level_option(p)
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    if args.crop < 64 or args.crop % 32:
        p.error("--crop must be a multiple of 32 and at least 64")
    if not 0 <= args.low < args.high <= 1:
        p.error("--low and --high must satisfy 0 <= low < high <= 1")
    for option in ("small_epochs", "big_epochs", "steps_per_epoch", "batch_size"):
        if getattr(args, option) < 1:
            p.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    if problem := threads_problem(args.threads):
        p.error(problem)
    try:
        check_out_dir(args.out)
    except InputError as exc:
        p.error(str(exc))
    if args.out.resolve() == args.labels.resolve():
        # The outputs (pseudo_mask.png, known.png, ...) would sit among the labels, and the next run refuse them.
        p.error(f"--out {args.out} is the labels folder; give another folder for the outputs")
    config = PseudoConfig(small_encoder=args.small_encoder, big_encoder=args.big_encoder,
                          small_epochs=args.small_epochs, big_epochs=args.big_epochs,
                          steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, crop=args.crop,
                          low=args.low, high=args.high, seed=args.seed, threads=args.threads, tta=args.tta)
    try:
        check_config(config)  # both models' architectures and memory, before the image is read
        check_memory(config)
    except InputError as exc:
        p.error(str(exc))
    return run_main(partial(_pseudo_label, args, config), name="am.pseudolabel", interrupted=RERUN_TO_START_AGAIN)


def _pseudo_label(args: argparse.Namespace, config: PseudoConfig) -> int:
    labels = read_labels(args.labels)  # small files first: a wrong folder is named before a large image is read
    image = read_normalised(args.image)
    # main() checked the config's architectures and memory before the image was read: not done twice.
    result = pseudo_label(image, labels, out_dir=args.out, config=config, progress=step_bar, config_checked=True)
    print(f"pseudo-labels: {100 * result.known.mean():.1f}% of the image trusted; wrote {args.out}/pseudo_mask.png, "
          f"overlay.png and model {result.model}")
    return 0


if __name__ == "__main__":
    run_command(main, "am.pseudolabel", RERUN_TO_START_AGAIN)
