"""Check checkpoint files before they are used: ``python -m am.model FILE [FILE ...]``.

A checkpoint uploaded to S3 is first read by ECS workers on GPU instances that are already
paid for; one they cannot load fails every one of them at start. This reads each file as a
worker does (``weights_only=True``, the architecture its metadata describes) and prints what it
holds, or names the file and what is wrong with it and exits 1. ``make upload-model`` runs it
before anything is copied.
"""

from __future__ import annotations

# Loaded with the interpreter already, so importing it leaves no time for a Ctrl-C; every other import is
# in the try below.
import sys

try:
    import argparse
    import numbers
    from pathlib import Path

    from am.cli import EXIT_ERROR, EXIT_OK, configure_logging, describe_os_error, run_main
    from am.errors import CheckpointError
    from am.startup import NOTHING_DONE, hold_ctrl_c, run_command

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m am.model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # Kept as text: Path would make an s3:// URI "s3:/..." before describe could name it as one.
    parser.add_argument("checkpoints", nargs="+", metavar="FILE",
                        help="checkpoint files to check (local files: download an s3:// model first)")
    return parser


BATCH_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def describe(path: Path | str) -> str:
    """One line on what the checkpoint at ``path`` holds; CheckpointError naming the file if it is unusable."""
    from am.model.checkpoint import load_checkpoint, s3_uri_problem

    if problem := s3_uri_problem(str(path)):
        raise CheckpointError(problem)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file: pass the path of a .pt checkpoint")
    meta, state = load_checkpoint(path)
    # Batch norm's running statistics are state, not parameters: counted, 4.5 M read 4.6 M.
    parameters = sum(t.numel() for name, t in state.items() if not name.endswith(BATCH_NORM_STATISTICS))
    trained = "trained" if meta.trained else "UNTRAINED (random weights)"
    return (f"{path}: {meta.architecture} with {meta.encoder}, decoder {','.join(map(str, meta.decoder_channels))}, "
            f"{parameters / 1e6:.1f} M parameters, {path.stat().st_size / 1e6:.1f} MB, {trained}"
            f"{_figures(meta.validation)}")


def _figures(validation: dict) -> str:
    """Its training's validation Dice and object F1, where the checkpoint holds both as numbers."""
    dice, f1 = validation.get("dice"), validation.get("f1")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (dice, f1)):
        return ""
    return f", its training validation: Dice {dice:.3f}, object F1 {f1:.3f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("WARNING")
    failed = 0
    for path in args.checkpoints:
        try:
            print(describe(path))
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
        except OSError as exc:  # one unreadable file is reported like a bad one; the others are still described
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            failed += 1
    if failed:
        print(f"error: {failed} of {len(args.checkpoints)} checkpoint(s) cannot be used", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    run_command(lambda: run_main(main, name="am.model"), "am.model", NOTHING_DONE)
