"""Command line for synthetic data: ``python -m am.synth dataset|tiles ...``.

``dataset`` writes full acquisitions in the pipeline's dataset layout with ground truth beside
them; ``tiles`` writes normalised training images and masks in the original training layout.
"""

from __future__ import annotations

# Every import is in the try below: a Ctrl-C while they load ends in one line, not a traceback (am.startup).
try:
    import argparse
    import time
    from functools import partial

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from am.cli import (
        RERUN_TO_START_AGAIN,
        add_log_level_option,
        configure_logging,
        path_option,
        run_main,
        seed_option,
    )
    from am.startup import NOTHING_DONE, hold_ctrl_c, run_command
    from am.synth.dataset import (
        MAX_SYNTHETIC_SIZE,
        MIN_VISIBLE_PITCH,
        group_name_problem,
        is_pitch,
        pitch_range_problem,
        synthetic_size_problem,
        too_small_pitch,
        write_dataset,
        write_tiles,
    )
    from am.synth.truth import LABELS

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.synth")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m am.synth",
        description="Generate synthetic post-MALDI microscopy with exact masks and mark ids.",
    )
    add_log_level_option(parser)
    # Also taken after the command (``am.synth dataset DIR --log-level WARNING``); there it has no default
    # of its own, which would replace one given before the command.
    after = argparse.ArgumentParser(add_help=False)
    add_log_level_option(after, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    ds = sub.add_parser(
        "dataset", parents=[after],
        help="write full acquisitions as DIR/source/<group>/image.tif with ground truth in DIR/truth/<group>/",
        description="Write DIR/source/<group>/image.tif (the pipeline's input) and, for checking results, "
        "DIR/truth/<group>/{mask.png,ids.png,lattice.json}; ids.png holds row*cols+col+1 under each mark.",
    )
    ds.add_argument("dir", type=path_option, help="dataset folder to create")
    ds.add_argument("--rows", type=int, required=True, help="acquisition grid rows")
    ds.add_argument("--cols", type=int, required=True, help="acquisition grid columns")
    ds.add_argument("--seed", type=seed_option, default=0, help="random seed; the same seed gives the same files")
    ds.add_argument("--groups", type=int, default=1, help="number of groups (images) to write (default 1)")
    ds.add_argument("--bit-depth", type=int, default=8, choices=[8, 16], help="pixel depth of image.tif")
    ds.add_argument("--pitch", type=float, default=None,
                    help="grid pitch in pixels (default: drawn per group, between 30 and 45 px with --style "
                         "realistic, 20 and 85 px with --style random)")
    ds.add_argument("--style", choices=["realistic", "random"], default="realistic",
                    help="'realistic': bright crescents on speckled tissue, like a typical acquisition; "
                    "'random': any look the training generator produces (hard cases included)")
    ds.add_argument("--uneven-rows", action="store_true",
                    help="rows 0.65-1.3 of their usual gap apart, each slid along itself by up to 0.2 of a "
                         "column, as some stages step between rows (the real tile_b sample); the usual gap widens "
                         "where marks are large, so that the closest rows' marks keep tissue between them")
    ds.add_argument("--force", action="store_true", help="replace an existing dataset in DIR")

    tl = sub.add_parser(
        "tiles", parents=[after],
        help="write training images and masks as DIR/<split>/synthetic/<group>/{source,mask}/NNNN.png",
        description="Write normalised 8-bit training images with 0/255 masks in the original training "
        "layout, readable by python -m am.train --data DIR.",
    )
    tl.add_argument("dir", type=path_option, help="training data root")
    tl.add_argument("--count", type=int, default=100, help="number of images (default 100)")
    tl.add_argument("--size", type=int, default=512,
                    help=f"image side in pixels, a multiple of 32 up to {MAX_SYNTHETIC_SIZE} (default 512)")
    tl.add_argument("--seed", type=seed_option, default=0, help="random seed")
    tl.add_argument("--split", choices=["train", "valid"], default="train", help="which split to write")
    tl.add_argument("--group", default=None, help="group folder name (default seed<SEED>)")
    tl.add_argument("--pitch-min", type=float, default=20.0,
                    help=f"smallest grid pitch in px, at least {MIN_VISIBLE_PITCH:g} (default 20)")
    tl.add_argument("--pitch-max", type=float, default=85.0, help="largest grid pitch in px (default 85)")
    tl.add_argument("--labels", choices=LABELS, default="visible",
                    help="visible: a mark's label reaches as far as the mark shows (default); "
                         "footprint: exactly the drawn pixels; margin: the visible extent rounded up to whole pixels")
    tl.add_argument("--force", action="store_true", help="replace the group folder if it already holds tiles")
    return parser


def _tiles(args: argparse.Namespace) -> int:
    with logging_redirect_tqdm():  # log lines above the bar, not glued onto its line
        folder = write_tiles(args.dir, count=args.count, size=args.size, seed=args.seed, split=args.split,
                             group=args.group, pitch_range=(args.pitch_min, args.pitch_max), labels=args.labels,
                             force=args.force,
                             progress=lambda it: tqdm(it, total=args.count, desc="tiles", unit="img"))
    print(f"wrote {args.count} images and masks to {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "tiles":
        if args.count < 1 or args.size < 32 or args.size % 32:
            parser.error(f"--count must be >= 1 and --size a multiple of 32, got {args.count} and {args.size}")
        if problem := synthetic_size_problem("--size", args.size):
            parser.error(problem)
        if problem := pitch_range_problem(args.pitch_min, args.pitch_max):
            parser.error(problem)
        if args.group is not None and (problem := group_name_problem(args.group)):
            parser.error(f"--{problem}")
    else:
        if args.rows < 1 or args.cols < 1 or args.groups < 1:
            parser.error(f"--rows, --cols and --groups must be >= 1, got {args.rows}, {args.cols}, {args.groups}")
        if args.pitch is not None and not is_pitch(args.pitch):
            parser.error(f"--pitch must be a number of pixels > 0, got {args.pitch}")
        if args.pitch is not None and (problem := too_small_pitch("--pitch", args.pitch)):
            parser.error(problem)
    configure_logging(args.log_level)
    command = _dataset if args.command == "dataset" else _tiles
    return run_main(partial(command, args), name="am.synth", interrupted=RERUN_TO_START_AGAIN)


def _dataset(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with logging_redirect_tqdm():  # each group's log line above the bar, not glued onto its line
        paths = write_dataset(args.dir, rows=args.rows, cols=args.cols, seed=args.seed, groups=args.groups,
                              bit_depth=args.bit_depth, pitch=args.pitch, realistic=args.style == "realistic",
                              uneven_rows=args.uneven_rows, force=args.force,
                              progress=lambda it: tqdm(it, total=args.groups, desc="dataset", unit="group"))
    print(f"wrote {len(paths)} group(s) to {args.dir} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    run_command(main, "am.synth", NOTHING_DONE)
