"""``python -m am.api [--host 127.0.0.1] [--port 8000]``: the task API over HTTP.

Submit one image per task (POST /tasks), poll it (GET /tasks/<id>), fetch the stitched mask
(GET /masks/<id>) and, when rows and cols were given, the AM id image and table
(GET /ams/<id>, GET /ams/<id>.csv). Each task runs the same pipeline as python -m am.pipeline,
in its own process, on the local backend unless configured otherwise; tasks and results are
kept under --data-dir, so a restarted server keeps finished results and resumes the rest.
The OpenAPI description is served at /openapi.json, an interactive page at /docs.
"""

from __future__ import annotations

# Loaded with the interpreter or the package already, so importing them leaves no time for a Ctrl-C;
# every other import is in the try below.
import logging
import os

try:
    import argparse
    from pathlib import Path

    from am.cli import (
        EXIT_OK,
        SCALE_HELP,
        add_log_level_option,
        configure_logging,
        path_option,
        run_main,
        scale_option,
        text_option,
    )
    from am.errors import ConfigError
    from am.messages import TTA_MODES
    from am.model_source import check_checkpoint
    from am.settings import BACKENDS, Settings, config_path_from, expand_home, load_settings
    from am.startup import NOTHING_DONE, hold_ctrl_c, run_command

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.api")

log = logging.getLogger("am.api")

# The most tasks one server runs at a time: each is a pipeline with its own workers, so even this many
# asks far more of one machine than it has; a thread per task is started up front.
MAX_CONCURRENCY = 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m am.api",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog="Pipeline settings resolve as: option, then environment variable AM_<KEY>, then the config file, "
               "then the default. python -m am.pipeline --config-template prints every key.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the API to the network)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--data-dir", type=path_option, default=Path("api-data"),
                        help="folder for tasks and their results (default ./api-data)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help=f"tasks run at the same time, 1 to {MAX_CONCURRENCY} (default 1)")
    parser.add_argument("--max-bytes", type=int, default=None,
                        help="largest accepted upload in bytes (default 268435456 = 256 MiB); larger is refused "
                             "with 413, as is an image whose header declares more than 8 times this in decoded pixels")
    parser.add_argument("--backend", choices=BACKENDS, help="local (default: embedded S3/SQS, worker processes) or aws")
    parser.add_argument("--workers", type=int, help="worker processes (local) or ECS tasks (aws) per task")
    parser.add_argument("--config", type=text_option,
                        help="YAML config file (default: $AM_CONFIG if set, else none)")
    parser.add_argument("--model", type=text_option,
                        help="checkpoint path or s3:// URI (default: the model shipped with am-segm; "
                             "aws: the stack's ModelUri)")
    parser.add_argument("--tile-size", type=int, help="tile side in pixels (default 512)")
    parser.add_argument("--tile-overlap", type=int, help="overlap between neighbouring tiles in pixels (default 128)")
    parser.add_argument("--scale", type=scale_option, help=SCALE_HELP)
    parser.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation: off (default), rot180, flips or d4")
    parser.add_argument("--batch-size", type=int, help="tiles per model call in each worker (default: by device)")
    add_log_level_option(parser, default=None)
    return parser


def _local_model(settings: Settings) -> Settings:
    """Tasks run from their own folders: a relative model path must not depend on where that is.

    A local file that is no usable checkpoint stops the server here: started, it would answer
    /health with ok and fail every task it accepted, telling API clients of a file on the server.
    """
    if not settings.model or settings.model.startswith("s3://"):
        return settings
    path = expand_home(settings.model, what=f"model {settings.model}")
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist; pass a checkpoint path or an s3:// URI with --model")
    check_checkpoint(path)
    return settings.replace(model=str(path.resolve()))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency {args.concurrency}: give a number of tasks from 1 to {MAX_CONCURRENCY}")
    if args.max_bytes is not None and args.max_bytes < 1:
        parser.error(f"--max-bytes must be a positive number of bytes, got {args.max_bytes}")

    def run() -> int:
        from am.api.app import create_app
        from am.api.listen import listening_socket, serve
        from am.api.runner import PipelineCommand, TaskRunner
        from am.api.tasks import TaskStore
        from am.api.uploads import DEFAULT_MAX_BYTES

        overrides = {"backend": args.backend, "workers": args.workers, "model": args.model,
                     "tile_size": args.tile_size, "tile_overlap": args.tile_overlap, "scale": args.scale,
                     "tta": args.tta, "batch_size": args.batch_size, "log_level": args.log_level}
        config_path = config_path_from(args.config, os.environ)
        settings = _local_model(load_settings(overrides, environ=os.environ, config_path=config_path))
        configure_logging(settings.log_level)
        # The port first: a server that cannot listen must not touch the data folder.
        with listening_socket(args.host, args.port) as sock:
            store = TaskStore(args.data_dir.resolve())
            command = PipelineCommand(settings, config_path=config_path.resolve() if config_path else None)
            runner = TaskRunner(store, command, concurrency=args.concurrency, environ=os.environ)
            app = create_app(store, runner, max_bytes=args.max_bytes or DEFAULT_MAX_BYTES)
            with store.exclusive():
                log.info("tasks run on the %s backend with %d worker(s) each; data in %s", settings.backend,
                         settings.workers, store.data_dir)
                serve(app, sock, log_level=settings.log_level.lower())
        # uvicorn may take the stop signal itself and return: the same stop as run_main's.
        log.info("stopped; cleaned up")
        return EXIT_OK

    configure_logging(args.log_level or "INFO")
    return run_main(run, name="am.api", server=True)


if __name__ == "__main__":
    run_command(main, "am.api", NOTHING_DONE)
