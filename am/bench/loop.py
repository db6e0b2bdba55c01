"""The full worker loop against the embedded S3/SQS endpoint: tiles per second and where the time goes.

The real :class:`~am.worker.Worker` runs in this process with an already loaded predictor; the
endpoint (moto's server, as the local backend uses) runs in a child process, as it does beside
local workers, so its request handling does not compete with the worker for one interpreter::

    with endpoint_process() as url:
        result = loop_throughput(predictor, images=tiles, count=512, endpoint_url=url, batch_size=64)
    result.worker_tiles_per_s, result.per_tile["download"]

Against moto every request costs milliseconds of Python in the endpoint; against S3 and SQS the
same protocol is bounded by request latency and the number of requests per tile instead.
"""

from __future__ import annotations

import logging
import multiprocessing
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection

import numpy as np

from am.errors import WorkerError
from am.messages import TileMessage, tiles_key
from am.model.predict import Predictor
from am.tilepack import pack_tiles
from am.transport.clients import ClientFactory, embedded_token, forget_embedded_endpoint, register_embedded_endpoint
from am.transport.queue import Queue, create_results_queue, delete_queue, ensure_tile_queues
from am.transport.storage import Storage
from am.worker.worker import EXIT_OK, Worker

log = logging.getLogger(__name__)

INPUT_BUCKET = "am-bench-input"
OUTPUT_BUCKET = "am-bench-output"
MODEL_URI = "bench://predictor"
VISIBILITY_S = 300
IDLE_EXIT_S = 1.0
ENDPOINT_START_S = 60.0


@dataclass(frozen=True)
class LoopResult:
    """What the worker did with ``tiles`` tiles: wall time to the last settled tile, busy seconds per stage."""

    tiles: int
    done: int
    wall_s: float
    per_tile: dict[str, float] = field(default_factory=dict)

    @property
    def worker_tiles_per_s(self) -> float:
        return self.done / self.wall_s if self.wall_s else 0.0


def _serve(conn: Connection) -> None:
    from am.endpoint import EmbeddedEndpoint

    # Its token, as the local backend's: moto accepts any key, so without one any user of this machine could
    # read and write the benchmark's objects and queues while it runs.
    with EmbeddedEndpoint(require_token=True) as endpoint:
        conn.send((endpoint.url, embedded_token(endpoint.url)))
        conn.recv()  # any message, or the parent going away, ends the server


@contextmanager
def endpoint_process() -> Iterator[str]:
    """An embedded S3/SQS endpoint in a child process; yields its URL and stops it on exit.

    The endpoint refuses requests without its token, which comes back over the process's pipe
    (never in a variable or argument another user could read) and is registered with
    :mod:`am.transport.clients`, so this process's clients of the URL carry it (and are isolated
    from the user's AWS set-up) until the endpoint stops.
    """
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child,), name="am-bench-endpoint", daemon=True)
    process.start()
    child.close()  # the child's end is the child's alone: a child that dies is then seen at once (EOFError)
    url = ""
    try:
        try:
            if not parent.poll(ENDPOINT_START_S):
                raise WorkerError(f"the embedded endpoint did not start within {ENDPOINT_START_S:.0f} s")
            url, token = parent.recv()
        except EOFError:
            raise WorkerError("the embedded endpoint's process exited before the endpoint started; its error "
                              "is above") from None
        register_embedded_endpoint(url, token)
        yield url
    finally:
        if url:
            forget_embedded_endpoint(url)
        if process.is_alive():
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.terminate()


def loop_throughput(
    predictor: Predictor,
    *,
    images: np.ndarray,
    count: int,
    endpoint_url: str,
    batch_size: int,
    tiles_per_message: int = 8,
    transfer_threads: int = 8,
    input_bucket: str = INPUT_BUCKET,
    output_bucket: str = OUTPUT_BUCKET,
    region: str = "us-east-1",
) -> LoopResult:
    """Upload ``count`` tiles (``images`` cycled) ``tiles_per_message`` to an object and a message, as the
    pipeline does, and run a worker until every tile is done; the job's objects and queues are removed afterwards.

    ``endpoint_url`` "" means real AWS in ``region`` (credentials from boto3's chain; the buckets
    are created if missing), so the same loop can be measured against S3 and SQS themselves.
    """
    clients = ClientFactory(endpoint_url=endpoint_url, region=region)
    sqs = clients.sqs()
    storage = Storage(clients.s3(), threads=16)
    for bucket in (input_bucket, output_bucket):
        storage.ensure_bucket(bucket)
    job = f"bench-{uuid.uuid4().hex[:8]}"
    queue_url, dlq_url = ensure_tile_queues(sqs, name=f"{job}-tiles", dead_letter_name=f"{job}-dlq",
                                            visibility_timeout_s=VISIBILITY_S, max_receive_count=3)
    results_url = create_results_queue(sqs, prefix="am-bench-results", job=job)
    try:
        bundles = [tuple(range(start, min(count, start + tiles_per_message)))
                   for start in range(0, count, tiles_per_message)]
        objects = [(tiles_key(job, "bench", tiles), pack_tiles(images[[n % len(images) for n in tiles]]))
                   for tiles in bundles]
        storage.put_many(input_bucket, objects)
        Queue(sqs, queue_url).send_many([
            TileMessage(job=job, group="bench", tiles=tiles, input=key, output=key, model=MODEL_URI,
                        reply=results_url).to_json()
            for tiles, (key, _) in zip(bundles, objects, strict=True)
        ])
        worker = Worker(Queue(sqs, queue_url), storage, lambda uri: predictor, input_bucket=input_bucket,
                        output_bucket=output_bucket, results=partial(Queue, sqs), batch_size=batch_size,
                        idle_exit_s=IDLE_EXIT_S, visibility_timeout_s=VISIBILITY_S, worker_id="bench",
                        transfer_threads=transfer_threads)
        code = worker.run()
        stats = worker.stats
        if code != EXIT_OK or stats.done != count:
            raise WorkerError(f"the benchmark worker exited with {code} after {stats.done} of {count} tile(s) "
                              f"({stats.failed} failed); see the log above")
        return LoopResult(tiles=count, done=stats.done, wall_s=stats.last_done - stats.started,
                          per_tile=stats.clock.per_tile(tiles=stats.done))
    finally:
        for url in (queue_url, dlq_url, results_url):
            delete_queue(sqs, url)
        for bucket in (input_bucket, output_bucket):
            storage.delete_prefix(bucket, f"{job}/")




__all__ = ["INPUT_BUCKET", "OUTPUT_BUCKET", "LoopResult", "endpoint_process", "loop_throughput"]
