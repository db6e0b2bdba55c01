"""The command-line edge shared by every ``python -m am.<name>`` entry point.

Only here do exceptions become exit codes: 0 on full success, 1 for an am-segm error (the
message says what to fix), 2 for bad usage, 130 after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType

from am.errors import AmError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# "on": masks as the model's checkpoint asks (touching marks cut apart, specks dropped); "off": thresholded only.
POSTPROCESS_MODES = ("on", "off")
# How the model runs, for workers (AM_PRECISION, AM_COMPILE) and commands alike; defined here, away
# from torch, so that the worker's configuration checks them without loading the model code.
# Precision auto: fp16 on CUDA, bf16 on a CPU with AMX, fp32 on other CPUs. Compile auto: on CUDA only.
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
COMPILE_MODES = ("auto", "on", "off")


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def add_postprocess_option(parser: argparse.ArgumentParser) -> None:
    """The one ``--postprocess`` switch of every command that makes masks to measure them."""
    parser.add_argument("--postprocess", choices=POSTPROCESS_MODES, default="on",
                        help="masks as the checkpoint asks: touching marks cut apart, specks dropped (default on)")


def add_precision_option(parser: argparse.ArgumentParser, choices: tuple[str, ...] = PRECISIONS) -> None:
    """The one ``--precision`` option of every command that runs the model (``choices``: those of
    :data:`PRECISIONS` the command can run)."""
    parser.add_argument("--precision", choices=choices, default="auto",
                        help="arithmetic of the forward pass (default auto, as workers choose: fp16 on CUDA, "
                             "bf16 on a CPU with AMX, fp32 on other CPUs)")


def masks_label(postprocess: bool) -> str:
    """How a command's masks were made, for the line that names the model."""
    return "masks post-processed" if postprocess else "masks thresholded only"


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_main(main: Callable[[], int], *, name: str) -> int:
    """Run ``main`` and map its outcome to an exit code; SIGTERM is handled like Ctrl-C so cleanup runs."""
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    log = logging.getLogger(name)
    try:
        return main()
    except AmError as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        log.error("interrupted; cleaned up, finished work is kept, rerun the same command to resume")
        return EXIT_INTERRUPTED
