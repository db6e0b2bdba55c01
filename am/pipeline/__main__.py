"""``python -m am.pipeline DATASET [GROUP ...] [--rows R --cols C]``: segment and number every mark.

Normalises each group's image, cuts it into overlapping tiles, has workers segment them
through S3 and SQS (an embedded endpoint and local worker processes by default, or ECS on
AWS), stitches the mask and registers the marks to the acquisition grid (R x C when given,
else a grid estimated from each group's marks). Exit code 1 when any group fails to register,
after every other group is registered.
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
    import stat
    import tempfile
    from pathlib import Path

    from am.cli import (
        EXIT_ERROR,
        EXIT_OK,
        RERUN_TO_RESUME,
        SCALE_HELP,
        add_log_level_option,
        configure_logging,
        path_option,
        run_main,
        scale_option,
    )
    from am.errors import InputError
    from am.grid_shape import grid_shape_error
    from am.messages import TTA_MODES
    from am.pitch import TRAINED_PITCH_PX
    from am.settings import BACKENDS, config_path_from, config_template, load_settings
    from am.startup import hold_ctrl_c, run_command

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.pipeline")

log = logging.getLogger("am.pipeline")


class _PrintConfigTemplate(argparse.Action):
    """Prints the template and exits, like --help: it needs no dataset argument."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        sys.stdout.write(config_template())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m am.pipeline",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog="Settings resolve as: option, then environment variable AM_<KEY>, then the config file, then the "
               "default. --config-template prints every key with its default.",
    )
    parser.add_argument("--config-template", action=_PrintConfigTemplate,
                        help="print the config file of every key at its default, with comments, and exit")
    parser.add_argument("dataset", type=path_option, help="dataset folder holding source/<group>/<image>")
    # A default, or argparse names the optional groups among the required arguments when none is given.
    parser.add_argument("groups", nargs="*", default=[], help="groups to process (default: every folder under source/)")
    parser.add_argument("--rows", type=int,
                        help="rows of the acquisition grid, taken as the truth (default: estimated from the marks)")
    parser.add_argument("--cols", type=int,
                        help="columns of the acquisition grid, taken as the truth (default: estimated from the marks)")
    parser.add_argument("--no-register", action="store_true",
                        help="stop after the stitched mask (no grid registration, no am_coords/)")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="local (embedded S3/SQS and worker processes) or aws "
                             "(default: AM_BACKEND or the config file's, else local)")
    parser.add_argument("--workers", type=int,
                        help="worker processes (local) or ECS tasks (aws) to start "
                             "(default: AM_WORKERS or the config file's, else 2)")
    parser.add_argument("--config", help="YAML config file (default: $AM_CONFIG if set, else none)")
    parser.add_argument("--model", help="checkpoint path or s3:// URI (default: the model shipped with am-segm; "
                                        "aws: the stack's ModelUri)")
    parser.add_argument("--tile-size", type=int, help="tile side in pixels (default 512)")
    parser.add_argument("--tile-overlap", type=int, help="overlap between neighbouring tiles in pixels (default 128)")
    parser.add_argument("--scale", type=scale_option, help=SCALE_HELP)
    parser.add_argument("--tta", choices=TTA_MODES,
                        help="test-time augmentation: off (default), rot180 (the tile and its half turn "
                             "averaged: most of d4's gain, 2x the model time), flips (4 views) or d4 (8 views: "
                             "the cleanest masks, 8x the model time)")
    parser.add_argument("--batch-size", type=int, help="tiles per model call in each worker (default: by device)")
    add_log_level_option(parser, default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    parser.add_argument("--wait-for-lock", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to SECONDS for another run on the dataset to end (default 0: refuse at once)")
    return parser


def _cache_dir() -> Path:
    """Where checks passed and the untrained stand-in are kept: XDG_CACHE_HOME, else ~/.cache.

    Where no home folder is known (HOME unset and no passwd entry, as in some containers) the
    temporary folder serves: the cache only spares work, and Path.home() would end the run in a traceback.
    """
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:
            base = str(_private_temporary_cache())
            log.warning("no home folder is known (HOME is unset): caching in %s; set XDG_CACHE_HOME to choose", base)
    return Path(base) / "am-segm"


def _private_temporary_cache() -> Path:
    """A cache folder of this user's alone in the shared temporary folder.

    The workers load the cache's untrained stand-in, and a check's marker there skips the check: a
    folder of that name another user made first (or a link) could hand them another checkpoint. The
    usual name is kept only where it is this user's own real folder, writable by no one else;
    otherwise a fresh folder serves this run.
    """
    folder = Path(tempfile.gettempdir()) / f"am-segm-cache-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        status = folder.lstat()
    except OSError:
        return Path(tempfile.mkdtemp(prefix="am-segm-cache-"))
    if stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid() and not status.st_mode & 0o022:
        return folder
    return Path(tempfile.mkdtemp(prefix="am-segm-cache-"))


def _registration_outcome(failed: list[str], groups: int) -> int:
    """The exit code, after the summary: 1 when a group could not be registered (its error was logged then)."""
    if not failed:
        return EXIT_OK
    kept = "the masks are" if len(failed) >= groups else "the masks and the other groups' ids are"
    log.error("registration failed for %d of %d group(s): %s (errors above); %s "
              "kept: look at tiles_stitched/<group>/overlay.png, fix --rows/--cols and rerun (finished tiles "
              "are reused), or where marks are split or missed because they are far larger or smaller than the "
              "model was trained on (the shipped model: lattice pitch %.0f-%.0f px) rerun with --scale (e.g. 0.5 "
              "for marks twice as large, or auto to read it from each image)",
              len(failed), groups, ", ".join(failed), kept, *TRAINED_PITCH_PX)
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # groups may follow the options
    if (args.rows is None) != (args.cols is None):
        parser.error("give --rows and --cols together (or neither, to estimate the grid from the marks)")
    if not (math.isfinite(args.wait_for_lock) and args.wait_for_lock >= 0):
        parser.error(f"--wait-for-lock {args.wait_for_lock} must be a finite number of seconds >= 0")
    if args.no_register and args.rows is not None:
        parser.error("--rows/--cols number the marks, which --no-register leaves out: give one or the other")
    # Before any tile is segmented: registration would refuse the grid only at the very end.
    problem = grid_shape_error(args.rows, args.cols, prefix="--")
    if problem:
        parser.error(problem)

    def run() -> int:
        from am.orchestrator import run_pipeline

        overrides = {"backend": args.backend, "workers": args.workers, "model": args.model,
                     "tile_size": args.tile_size, "tile_overlap": args.tile_overlap, "scale": args.scale,
                     "tta": args.tta, "batch_size": args.batch_size, "log_level": args.log_level}
        settings = load_settings(overrides, environ=os.environ,
                                 config_path=config_path_from(args.config, os.environ))
        configure_logging(settings.log_level)
        # A file given as the dataset is refused by DatasetLayout.groups, like any other caller's.
        if not args.dataset.exists():
            raise InputError(f"dataset folder {args.dataset} does not exist; "
                             "create it with source/<group>/<image> inside (make sample builds one)")
        summary = run_pipeline(args.dataset, settings=settings, groups=args.groups or None, rows=args.rows,
                               cols=args.cols, register=not args.no_register, cache_dir=_cache_dir(),
                               environ=os.environ, show_progress=not args.no_progress,
                               lock_wait_s=args.wait_for_lock)
        for line in summary.lines():
            print(line)
        return _registration_outcome(summary.registration_failed, len(summary.groups))

    configure_logging(args.log_level or "INFO")
    return run_main(run, name="am.pipeline", interrupted=RERUN_TO_RESUME)


if __name__ == "__main__":
    run_command(main, "am.pipeline", RERUN_TO_RESUME)
