"""Command line: ``python -m am.register DATASET [GROUP ...] --rows R --cols C``.

Numbers the ablation marks of each group's stitched mask by acquisition grid position and
writes ``DATASET/am_coords/<group>/``. Exit code 0 when every group registered, 1 when any
failed (each failure is reported on stderr), 2 for a usage error.
"""

from __future__ import annotations

# Loaded with the interpreter or the package already, so importing them leaves no time for a Ctrl-C;
# every other import is in the try below.
import logging
import sys

try:
    import argparse
    from collections.abc import Sequence
    from pathlib import Path

    from am.cli import add_log_level_option, configure_logging, describe_os_error, path_option, run_main
    from am.dataset import as_group_name, group_folders
    from am.dataset_lock import dataset_lock
    from am.errors import AmError
    from am.grid_shape import grid_shape_error
    from am.register.dataset import output_dir, register_group
    from am.startup import NOTHING_DONE, hold_ctrl_c, run_command

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.register")

log = logging.getLogger("am.register")

EPILOG = """\
inputs (made by python -m am.pipeline, or put there by hand):
  DATASET/tiles_stitched/<group>/mask.tiff     8-bit 0/255 segmentation mask (0/1 and 1-bit are read
                                               too; other grey levels are cut at 128, with a warning)
  DATASET/source_norm/<group>/source.tiff      normalised 8-bit grey image of the mask's size, for the overlay
outputs, in DATASET/am_coords/<group>/:
  am_coordinates.png   16-bit ids, 0 = background, id = row * cols + col + 1
  am_coordinates.csv   id,row,col,x,y,area_px per numbered mark
  overlay.png          outlines and ids over the image (plus overlay_tiles/ for large grids)
  registration.json    fitted angle, pitches, origin, residual, counts and warnings

Give --rows and --cols whenever you know the acquisition grid: they are taken as the truth.
Without them the grid's shape is estimated from the marks and registration.json says so.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m am.register",
        description="Number every ablation mark of a segmented dataset by its acquisition grid position.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", type=path_option, metavar="DATASET",
                        help="dataset folder (its layout: README, \"Dataset layout\")")
    parser.add_argument(
        "groups", nargs="*", metavar="GROUP", default=[],  # a default: argparse would call GROUP required
        help="groups to register (default: every folder under DATASET/source/, else DATASET/tiles_stitched/)",
    )
    parser.add_argument("--rows", type=int, default=None, help="rows of the acquisition grid (top to bottom)")
    parser.add_argument("--cols", type=int, default=None, help="columns of the acquisition grid (left to right)")
    add_log_level_option(parser)
    return parser


def default_groups(dataset: Path) -> list[str]:
    """The groups under source/ (as the pipeline finds them), else under tiles_stitched/."""
    for folder in (dataset / "source", dataset / "tiles_stitched"):
        if folder.is_dir() and (groups := group_folders(folder)):
            return groups
    return []


def unknown_group(dataset: Path, group: str) -> str | None:
    """Why ``group`` is no group of ``dataset`` (a mistyped name), listing those it has; None where it is one.

    Without it a mistyped group was told that its stitched mask does not exist and to run
    am.pipeline, which does not help: the group's name is what is wrong.
    """
    folders = [dataset / "source", dataset / "tiles_stitched"]
    if any((folder / group).is_dir() for folder in folders):
        return None
    known = sorted({name for folder in folders if folder.is_dir() for name in group_folders(folder)})
    listed = ", ".join(known) if known else "none (expected folders under source/ or tiles_stitched/)"
    return f"no group {group!r} in {dataset}; groups: {listed}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # groups may follow the options
    configure_logging(args.log_level)
    return run_main(lambda: _register_groups(parser, args), name="am.register",
                    interrupted="groups finished before it keep their new ids; rerun the same command to register "
                                "every group")


def _register_groups(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if (args.rows is None) != (args.cols is None):
        parser.error("give --rows and --cols together (or neither, to estimate the grid from the marks)")
    # Before any group's earlier outputs are removed.
    problem = grid_shape_error(args.rows, args.cols, prefix="--")
    if problem:
        parser.error(problem)
    args.groups = [as_group_name(group) for group in args.groups]
    for group in args.groups:
        if not group or "/" in group or "\\" in group or group in (".", ".."):
            parser.error(f"group {group!r} must be a folder name inside the dataset, not a path")
    if not args.dataset.is_dir():
        why = "is a file, not a folder: give the dataset folder" if args.dataset.exists() else "does not exist"
        print(f"error: dataset folder {args.dataset} {why}", file=sys.stderr)
        return 1
    groups = args.groups or default_groups(args.dataset)
    if not groups:
        print(f"error: {args.dataset} has no groups: expected folders under source/ or tiles_stitched/; "
              "run python -m am.pipeline first", file=sys.stderr)
        return 1
    # A pipeline or another am.register on this dataset meanwhile would replace the same ids.
    with dataset_lock(args.dataset, command="am.register"):
        return _register_each(args, groups)


def _register_each(args: argparse.Namespace, groups: list[str]) -> int:
    failed = 0
    for group in groups:
        if problem := unknown_group(args.dataset, group):
            print(f"error: group {group}: {problem}", file=sys.stderr)
            failed += 1
            continue
        try:
            reg = register_group(args.dataset, group, rows=args.rows, cols=args.cols)
        except AmError as exc:
            print(f"error: group {group}: {exc}", file=sys.stderr)
            failed += 1
            continue
        except OSError as exc:  # a read-only or full dataset: this group fails, the others are still tried
            print(f"error: group {group}: {describe_os_error(exc)}", file=sys.stderr)
            failed += 1
            continue
        shape = "estimated" if reg.estimated_shape else "given"
        print(
            f"{group}: {reg.assigned} marks numbered on a {reg.rows} x {reg.cols} grid ({shape}), "
            f"{reg.empty_nodes} empty positions, {reg.off_lattice + reg.duplicates} marks without id, "
            f"angle {reg.angle_deg:.2f} deg, {reg.pitch_text()}, "
            f"residual {reg.residual_px:.2f} px -> {output_dir(args.dataset, group)}"
        )
        if reg.warnings:
            print(f"  {len(reg.warnings)} warning(s), in the log and in registration.json")
    if failed:
        print(f"error: {failed} of {len(groups)} group(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_command(main, "am.register", NOTHING_DONE)
