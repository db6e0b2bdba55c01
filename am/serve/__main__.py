"""``python -m am.serve serve``: the SageMaker inference container's entry point.

SageMaker starts the container as ``docker run <image> serve`` and then talks HTTP to port
8080: ``GET /ping`` for health, ``POST /invocations`` with one image per request (image/png,
image/tiff or application/x-image), answered with the mask as a PNG. The model is the
checkpoint SageMaker unpacked into /opt/ml/model (model.pt, or the only .pt file there).
Images are normalised, tiled, segmented and stitched in this process, as the pipeline does.
"""

from __future__ import annotations

# Loaded with the interpreter or the package already, so importing them leaves no time for a Ctrl-C;
# every other import is in the try below.
import logging
import os

try:
    import argparse
    from collections.abc import Mapping
    from pathlib import Path

    from am.cli import (
        EXIT_OK,
        PRECISIONS,
        SCALE_HELP,
        add_log_level_option,
        add_precision_option,
        configure_logging,
        path_option,
        run_main,
        scale_option,
        threads_problem,
    )
    from am.errors import ConfigError
    from am.messages import TTA_MODES
    from am.settings import config_path_from, load_settings
    from am.startup import NOTHING_DONE, hold_ctrl_c, run_command

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.serve")

log = logging.getLogger("am.serve")

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
SAGEMAKER_PORT = 8080


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m am.serve",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog="Tile and normalisation settings resolve as: option, then AM_<KEY>, then the config file "
               "(--config or $AM_CONFIG), then the default. --precision resolves as: option, then "
               "$AM_PRECISION (as workers read it), then auto. The port defaults to $SAGEMAKER_BIND_TO_PORT "
               "when SageMaker sets it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve /ping and /invocations (what SageMaker runs)",
                                description="Serve /ping and /invocations until stopped (SIGTERM stops cleanly).")
    serve.add_argument("--model-dir", type=path_option, default=SAGEMAKER_MODEL_DIR,
                       help=f"folder holding model.pt or a single .pt checkpoint (default {SAGEMAKER_MODEL_DIR})")
    serve.add_argument("--host", default="0.0.0.0",
                       help="address to listen on (default 0.0.0.0, as SageMaker requires)")
    serve.add_argument("--port", type=int, default=None, help=f"TCP port (default {SAGEMAKER_PORT})")
    serve.add_argument("--max-bytes", type=int, default=None,
                       help="largest accepted record in bytes (default 268435456 = 256 MiB); larger is refused "
                            "with 413, as is an image whose header declares more than 8 times this in decoded pixels")
    serve.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    serve.add_argument("--threads", type=int, default=0, help="CPU threads for the model (default 0: all cores)")
    add_precision_option(serve)
    # None: not given, so $AM_PRECISION decides (see resolve_precision_option).
    serve.set_defaults(precision=None)
    serve.add_argument("--config", help="YAML config file (default: $AM_CONFIG if set, else none)")
    serve.add_argument("--tile-size", type=int, help="tile side in pixels (default 512)")
    serve.add_argument("--tile-overlap", type=int, help="overlap between neighbouring tiles in pixels (default 128)")
    serve.add_argument("--batch-size", type=int, help="tiles per model call (default: by device)")
    serve.add_argument("--scale", type=scale_option, help=SCALE_HELP)
    serve.add_argument("--tta", choices=TTA_MODES,
                       help="test-time augmentation: off (default), rot180 (2 views), flips (4) or d4 (8)")
    add_log_level_option(serve, default=None)
    return parser


def resolve_precision_option(option: str | None, environ: Mapping[str, str]) -> str:
    """``--precision`` if given, else ``AM_PRECISION`` read as the worker reads it, else auto.

    A SageMaker container is configured through its environment, so the variable the workers
    obey must work here too.
    """
    if option:
        return option
    value = environ.get("AM_PRECISION", "").strip().lower() or "auto"
    if value not in PRECISIONS:
        raise ConfigError(f"AM_PRECISION = {value!r} must be one of {', '.join(PRECISIONS)} (auto is fp16 on CUDA, "
                          "bf16 on a CPU with AMX, fp32 on other CPUs); fix the variable or pass --precision")
    return value


def _port_from_environment(parser: argparse.ArgumentParser) -> int:
    """SAGEMAKER_BIND_TO_PORT, where SageMaker sets it, else 8080; an empty one counts as unset."""
    text = os.environ.get("SAGEMAKER_BIND_TO_PORT", "").strip()
    if not text:
        return SAGEMAKER_PORT
    try:
        port = int(text)
    except ValueError:
        parser.error(f"SAGEMAKER_BIND_TO_PORT = {text!r} is not a port number; set it to 0-65535, unset it "
                     f"(port {SAGEMAKER_PORT}) or pass --port")
    if not 0 <= port <= 65535:
        parser.error(f"SAGEMAKER_BIND_TO_PORT = {port} must be between 0 and 65535; fix it or pass --port")
    return port


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else _port_from_environment(parser)
    if not 0 <= port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {port}")
    if args.max_bytes is not None and args.max_bytes < 1:
        parser.error(f"--max-bytes must be a positive number of bytes, got {args.max_bytes}")
    if problem := threads_problem(args.threads):
        parser.error(problem)

    def run() -> int:
        from am.api.listen import listening_socket, serve
        from am.api.uploads import DEFAULT_MAX_BYTES
        from am.model.predict import Predictor
        from am.serve.app import MIB, create_app
        from am.serve.segment import ImageSegmenter, find_model

        overrides = {"tile_size": args.tile_size, "tile_overlap": args.tile_overlap, "batch_size": args.batch_size,
                     "log_level": args.log_level, "tta": args.tta, "scale": args.scale}
        settings = load_settings(overrides, environ=os.environ, config_path=config_path_from(args.config, os.environ))
        configure_logging(settings.log_level)
        sock = listening_socket(args.host, port)  # before minutes of loading a model it could not serve
        precision = resolve_precision_option(args.precision, os.environ)
        model_path = find_model(args.model_dir)
        predictor = Predictor.from_checkpoint(model_path, device=args.device, threads=args.threads,
                                              batch_size=settings.batch_size, tta=settings.tta, precision=precision)
        log.info("model %s loaded on %s (%s); tiles of %d px overlapping by %d, scale %s", model_path,
                 predictor.device, predictor.precision, settings.tile_size, settings.tile_overlap, settings.scale)
        segmenter = ImageSegmenter(predictor, tile_size=settings.tile_size, tile_overlap=settings.tile_overlap,
                                   low_pct=settings.norm_low_pct, high_pct=settings.norm_high_pct,
                                   scale=settings.scale)
        if args.max_bytes is not None and args.max_bytes < MIB:
            log.warning("--max-bytes %d is below 1 MiB, the least SageMaker's MaxPayloadInMB can say: "
                        "/execution-parameters says 1 MB, and records between the two are refused with 413",
                        args.max_bytes)
        app = create_app(segmenter, max_bytes=args.max_bytes or DEFAULT_MAX_BYTES)
        serve(app, sock, log_level=settings.log_level.lower())
        # uvicorn may take the stop signal itself and return: the same stop as run_main's.
        log.info("stopped")
        return EXIT_OK

    configure_logging(args.log_level or "INFO")
    return run_main(run, name="am.serve", server=True)


if __name__ == "__main__":
    run_command(main, "am.serve", NOTHING_DONE)
