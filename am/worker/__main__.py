"""``python -m am.worker``: one worker process, configured entirely by AM_* environment variables.

Environment: AM_QUEUE_URL, AM_INPUT_BUCKET, AM_OUTPUT_BUCKET (required); AM_MODEL (path or
s3:// URI, default am/models/default.pt of the repository; the worker image leaves that file out,
so its tasks set AM_MODEL), AM_ENDPOINT_URL (local backend only), AM_REGION,
AM_BATCH_SIZE (0: 4 on CPU, 64 on CUDA), AM_IDLE_EXIT_S, AM_VISIBILITY_TIMEOUT_S,
AM_STOP_TIMEOUT_S (seconds from SIGTERM to SIGKILL, default 40: a stopped worker finishes its
work in hand for all but the last 15 of them, then gives back what is left), AM_MAX_BATCH_S
(default 900: a model call of AM_BATCH_SIZE tiles running longer is taken for a hung device; the
worker gives its messages back and exits 1), AM_OUTAGE_PATIENCE_S (default 300: how long a tile's
transfer or an s3:// model's download is retried while S3 throttles or cannot be reached, its messages
held, before the worker gives them back and exits 1), AM_THREADS
(torch CPU threads, 0: torch's default), AM_COMPILE (auto|on|off: torch.compile, auto on CUDA
only), AM_PRECISION (auto|fp32|fp16|bf16: auto is fp16 on CUDA, bf16 on a CPU with AMX tile units,
fp32 on other CPUs; fp16 needs CUDA), AM_POSTPROCESS
(on|off: masks as the checkpoint asks, touching marks cut apart and specks dropped; default on),
AM_LOG_LEVEL, AM_WORKER_ID (default host-pid).

Exit codes: 0 after idle exit or a clean stop (first SIGTERM/SIGINT), 1 when a bucket, or the
bucket or object of an s3:// model not yet loaded, does not exist (at start, or gone while running),
the model cannot be loaded, S3 stays unavailable beyond AM_OUTAGE_PATIENCE_S, the endpoint's
certificate does not verify against the CA bundle (AWS_CA_BUNDLE) or that bundle cannot be read, the
worker breaks, a model call hangs, or a second signal aborts it, 2 for bad settings (checked before
any network call: a malformed s3:// AM_MODEL, an AM_PRECISION this machine's device cannot run, ...)
or any command-line argument other than -h/--help.
"""

from __future__ import annotations

# Loaded with the interpreter or the package already, so importing them leaves no time for a Ctrl-C;
# every other import is in the try below.
import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def _stopped_while_starting() -> int:
    """Log that SIGINT stopped the worker before its own handlers took it over, in one line; returns 0.

    For a Ctrl-C while the modules below load or while main() reads its settings: the worker has received
    nothing and holds nothing, so this is a clean stop, with exit code 0 as for any first SIGINT.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("am.worker").info("stopped while starting; nothing was received")
    return 0


try:
    import argparse
    import signal
    import tempfile
    import time
    from collections.abc import Callable, Mapping, Sequence
    from functools import partial
    from pathlib import Path
    from types import FrameType

    import cv2

    from am.cli import enable_stack_dumps, quiet_wire_loggers
    from am.errors import AmError, ConfigError, TransportError
    from am.model.memory import retain_freed_memory
    from am.startup import hold_ctrl_c
    from am.transport.clients import ClientFactory
    from am.transport.queue import Queue
    from am.transport.retry import UntrustedEndpoint
    from am.transport.storage import NamedBucket, Storage, require_existing_buckets
    from am.worker.config import WorkerConfig
    from am.worker.models import MissingModel, ModelCache, Predictor
    from am.worker.outage import TransferAbandoned, never_abandoned, patiently
    from am.worker.worker import EXIT_FAILED, EXIT_OK, OPENCV_THREADS, Worker

    if __name__ == "__main__":
        hold_ctrl_c()  # until main() runs inside the try at the end of this file
except KeyboardInterrupt:
    if __name__ != "__main__":  # imported by a program: its Ctrl-C is the program's to handle
        raise
    # Not sys.exit: a Ctrl-C that came through scipy's exec() is marked unhandled (see am.startup.exit_interrupted).
    os._exit(_stopped_while_starting())

log = logging.getLogger("am.worker")

EXIT_USAGE = 2
# How often a start-up wait for S3 looks whether a signal asked the worker to stop.
_SIGNAL_POLL_S = 0.1


class ShutdownSignals:
    """Two-stage SIGTERM/SIGINT: the first finishes the batch in hand and exits 0, the second exits now.

    Installed before the model loads, so a worker told to stop while still starting exits
    cleanly instead of dying on the default action.
    """

    def __init__(self) -> None:
        self.received = 0
        self._worker: Worker | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def wait(self, timeout_s: float) -> bool:
        """Pause up to ``timeout_s``; True once a signal has asked the worker to stop.

        Polls the counter: the handler only counts (see :meth:`_handle`), and setting a
        ``threading.Event`` from it could deadlock on the lock the interrupted code holds.
        """
        deadline = time.monotonic() + timeout_s
        while not self.received and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(_SIGNAL_POLL_S, left))
        return bool(self.received)

    def attach(self, worker: Worker) -> None:
        self._worker = worker
        self._forward()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only set flags here: the worker's supervising loop logs and acts, outside the handler.
        self.received += 1
        self._forward()

    def _forward(self) -> None:
        if self._worker is None or not self.received:
            return
        if self.received == 1:
            self._worker.stop()
        else:
            self._worker.abort()


def build_worker(config: WorkerConfig, *, stopped: Callable[[float], bool] = never_abandoned) -> Worker:
    """Clients, storage, queue and models for ``config``; loads the start-up model now, so a bad one fails fast.

    ``stopped(seconds)`` pauses between the rounds of an S3 outage met while loading the model and says
    whether the worker was told to stop meanwhile (:meth:`ShutdownSignals.wait`).
    """
    from am.model.checkpoint import default_model_path
    from am.model.predict import Predictor as UNetPredictor

    # PNG codecs and post-processing run on pools of their own: OpenCV's threads would only crowd them.
    cv2.setNumThreads(OPENCV_THREADS)
    clients = ClientFactory(endpoint_url=config.endpoint_url, region=config.region)
    sqs = clients.sqs()
    storage = Storage(clients.s3())
    require_buckets(storage, config)
    models = ModelCache(
        partial(UNetPredictor.from_checkpoint, threads=config.threads, batch_size=config.batch_size,
                precision=config.precision, compile=config.compile, postprocess=config.postprocess == "on"),
        storage=storage,
        cache_dir=Path(tempfile.gettempdir()) / "am-segm-models",
    )
    model = config.model or str(default_model_path())
    predictor = load_start_up_model(models, model, outage_s=config.outage_patience_s, stopped=stopped)
    queue = Queue(sqs, config.queue_url)
    max_receives, dead_letter_url = queue.redrive()
    return Worker(
        queue,
        storage,
        models,
        input_bucket=config.input_bucket,
        output_bucket=config.output_bucket,
        results=partial(Queue, sqs),
        batch_size=config.batch_size_for(predictor.device),
        idle_exit_s=config.idle_exit_s,
        visibility_timeout_s=config.visibility_timeout_s,
        max_receives=max_receives,
        dead_letters=Queue(sqs, dead_letter_url) if dead_letter_url else None,
        worker_id=config.worker_id,
        stop_grace_s=config.stop_grace_s,
        max_batch_s=config.max_batch_s,
        outage_s=config.outage_patience_s,
    )


def require_buckets(storage: Storage, config: WorkerConfig) -> None:
    """Refuse a tile or mask bucket that does not exist, naming its setting, before any message is received:
    a worker that went on would fail every tile it took and move the whole queue to the dead-letter queue.

    A bucket that cannot be checked is not refused (a warning says so): HeadBucket needs s3:ListBucket,
    which the stack's TaskRole grants but a role of one's own may lack, and a bucket missing after all
    stops the worker at its first tile.
    """

    def go_on(named: NamedBucket, exc: TransportError) -> None:
        if isinstance(exc, UntrustedEndpoint):
            # Not a right the role may lack: nothing else the worker does with S3 could succeed either.
            raise exc
        log.warning("cannot check that bucket %s (%s) exists, going on (HeadBucket needs s3:ListBucket; a "
                    "missing bucket will stop the worker at its first tile instead): %s", named.bucket, named.setting,
                    exc)

    require_existing_buckets(
        storage,
        (NamedBucket(config.input_bucket, "AM_INPUT_BUCKET", "InputBucket"),
         NamedBucket(config.output_bucket, "AM_OUTPUT_BUCKET", "OutputBucket")),
        missing=lambda named: (f"bucket {named.bucket} ({named.setting}) does not exist; set {named.setting} to an "
                               f"existing bucket (on AWS, the stack's {named.output} output)"),
        unchecked=go_on,
    )


def load_start_up_model(models: ModelCache, model: str, *, outage_s: float,
                        stopped: Callable[[float], bool] = never_abandoned) -> Predictor:
    """Load AM_MODEL before anything is received. An ``s3://`` one whose bucket or object does not exist is
    refused naming the setting: S3's answer alone (bucket X does not exist) does not say which of the
    worker's settings to fix.

    S3 throttling or an unreachable S3 is waited out for up to ``outage_s`` (AM_OUTAGE_PATIENCE_S), as
    for a tile's transfer: a fleet started during a blip must not all exit on it. A model that cannot
    be looked up for another reason (a refusal: without s3:ListBucket S3 answers 403 also for a missing
    key) is raised at once, with S3's answer: nothing says it is missing.
    """
    try:
        return patiently(f"download of model {model} (AM_MODEL)", lambda: models(model), outage_s=outage_s,
                         wait=stopped)
    except MissingModel as exc:
        raise ConfigError(f"AM_MODEL = {model} cannot be loaded: {exc.reason}; set AM_MODEL to the s3:// URI of an "
                          "uploaded checkpoint (on AWS, the stack's ModelUri output, where make upload-model puts "
                          "one)") from exc


def build_parser() -> argparse.ArgumentParser:
    """Arguments only for ``--help``: the worker is configured by the environment, as ECS sets it."""
    return argparse.ArgumentParser(prog="python -m am.worker", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def main(environ: Mapping[str, str], argv: Sequence[str] = ()) -> int:
    """Run one worker; ``argv`` is read first, so ``--help`` works without any AM_* variable set."""
    try:
        build_parser().parse_args(list(argv))
    except SystemExit as exc:  # --help (0), or an argument the worker does not take (2, message printed)
        return EXIT_USAGE if exc.code else 0
    try:
        config = WorkerConfig.from_environ(environ)
    except ConfigError as exc:
        print(f"am.worker: {exc}; python -m am.worker --help lists every variable", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=config.log_level, format=LOG_FORMAT, stream=sys.stderr)
    quiet_wire_loggers()
    # Before any thread starts: the compute thread must allocate from the one arena (see am.model.memory).
    retain_freed_memory()
    signals = ShutdownSignals()
    signals.install()
    enable_stack_dumps()
    try:
        worker = build_worker(config, stopped=signals.wait)
    except TransferAbandoned as exc:
        # Told to stop while waiting for S3 to load the model: nothing was received, nothing is held.
        log.info("worker %s stopped while starting: %s", config.worker_id, exc)
        return EXIT_OK if signals.received == 1 else EXIT_FAILED
    except AmError as exc:
        log.error("worker %s cannot start: %s", config.worker_id, exc)
        return EXIT_FAILED
    if signals.received > 1:
        log.warning("worker %s: told twice to stop while starting; exiting", config.worker_id)
        return EXIT_FAILED
    signals.attach(worker)
    return worker.run()


if __name__ == "__main__":
    try:
        # A Ctrl-C held since the imports, or one before main() installs ShutdownSignals, comes through here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        code = main(os.environ, sys.argv[1:])
    except KeyboardInterrupt:
        code = _stopped_while_starting()
    logging.shutdown()
    sys.stderr.flush()
    # Exit without waiting for threads still blocked in a long poll or an aborted transfer:
    # whatever they hold was released above or reappears when its visibility timeout ends.
    os._exit(code)
