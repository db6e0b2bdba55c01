"""The task API served as ``python -m am.api`` serves it, with a short grace period and two routes that never end.

``python -m tests.api.stop_server --data-dir DIR --grace-s S --host H --port P``: tasks run the fake
pipeline; ``GET /test/hold`` never answers, ``GET /test/stream`` starts an answer and never ends it.
So that a test can stop the server while requests of each kind are running.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.responses import StreamingResponse

from am.api.app import create_app
from am.api.listen import listening_socket, serve
from am.api.runner import TaskRunner
from am.api.tasks import TaskStore
from am.cli import EXIT_OK, configure_logging, run_main
from am.settings import Settings
from tests.api.test_runner import FakePipeline

log = logging.getLogger("am.api")


def main() -> int:
    parser = argparse.ArgumentParser()
    for option in ("--data-dir", "--host"):
        parser.add_argument(option, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grace-s", type=float, required=True)
    args = parser.parse_args()

    def run() -> int:
        store = TaskStore(Path(args.data_dir).resolve())
        app = create_app(store, TaskRunner(store, FakePipeline(Settings()), environ=os.environ, stop_grace_s=5))

        @app.get("/test/hold")
        async def hold() -> None:
            await asyncio.Event().wait()

        @app.get("/test/stream")
        async def stream() -> StreamingResponse:
            async def forever() -> AsyncIterator[bytes]:
                while True:
                    yield b"x" * 100
                    await asyncio.sleep(0.1)

            return StreamingResponse(forever(), media_type="application/octet-stream")

        with listening_socket(args.host, args.port) as sock, store.exclusive():
            serve(app, sock, log_level="info", grace_s=args.grace_s)
        log.info("stopped; cleaned up")
        return EXIT_OK

    configure_logging("INFO")
    return run_main(run, name="am.api", server=True)


if __name__ == "__main__":
    sys.exit(main())
