"""The worker's settings, read from ``AM_*`` environment variables by ``python -m am.worker`` only.

A worker is started by a launcher (a local subprocess or an ECS task), which passes every
setting in the environment; `python -m am.worker --help` lists them::

    config = WorkerConfig.from_environ(os.environ)     # ConfigError names what is missing or bad
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from am.cli import COMPILE_MODES, POSTPROCESS_MODES, PRECISIONS, threads_problem
from am.errors import ConfigError, InputError
from am.settings import region_problem

N = TypeVar("N", int, float)

REQUIRED = ("AM_QUEUE_URL", "AM_INPUT_BUCKET", "AM_OUTPUT_BUCKET")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_IDLE_EXIT_S = 60.0
DEFAULT_VISIBILITY_TIMEOUT_S = 120
# AM_STOP_TIMEOUT_S: seconds between SIGTERM and SIGKILL that whoever runs the worker allows (ECS's
# stopTimeout, the local launcher's deadline). The worker keeps the last STOP_RELEASE_MARGIN_S of
# them to give back the work it could not finish and to exit; the rest is its grace for finishing.
# CloudFormation cannot subtract, so the stack passes the timeout itself and the worker subtracts.
STOP_RELEASE_MARGIN_S = 15.0
DEFAULT_STOP_TIMEOUT_S = 40.0
# AM_MAX_BATCH_S: a model call (with a model's first load and compilation) still running after this
# long is taken for a hung device or driver, and the worker gives its messages back and exits 1: the
# heartbeat would otherwise keep them, and the batches prefetched behind them, hidden for up to 12 hours.
DEFAULT_MAX_BATCH_S = 900.0
# AM_OUTAGE_PATIENCE_S: how long a tile's download or upload, or the download of an s3:// model, keeps
# being retried while S3 throttles or cannot be reached, the messages held meanwhile (the heartbeat keeps
# them hidden), before the worker gives up on S3 and exits 1 with them given back: minutes of SlowDown, or
# a network that comes back, cost no receive; an S3 that stays away stops the worker (am.worker.outage).
DEFAULT_OUTAGE_PATIENCE_S = 300.0
# Tiles per batch when AM_BATCH_SIZE is 0 or empty: what fits the device comfortably at 512x512.
DEFAULT_BATCH_CPU = 4
DEFAULT_BATCH_CUDA = 64


@dataclass(frozen=True)
class WorkerConfig:
    """Everything ``python -m am.worker`` needs; ``model`` "" means the model shipped with the package."""

    queue_url: str
    input_bucket: str
    output_bucket: str
    model: str = ""
    endpoint_url: str = ""
    region: str = "us-east-1"
    batch_size: int = 0
    idle_exit_s: float = DEFAULT_IDLE_EXIT_S
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    max_batch_s: float = DEFAULT_MAX_BATCH_S
    outage_patience_s: float = DEFAULT_OUTAGE_PATIENCE_S
    threads: int = 0
    log_level: str = "INFO"
    worker_id: str = ""
    compile: str = "auto"
    precision: str = "auto"
    postprocess: str = "on"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerConfig:
        """Read and check every AM_* variable; ConfigError lists all missing required ones at once."""
        missing = [name for name in REQUIRED if not environ.get(name, "").strip()]
        if missing:
            raise ConfigError(
                f"missing environment variable(s) {', '.join(missing)}: the worker reads its settings from "
                "the environment (set them, or start workers with python -m am.pipeline)"
            )

        def text(name: str, default: str = "") -> str:
            return environ.get(name, "").strip() or default

        config = cls(
            queue_url=text("AM_QUEUE_URL"),
            input_bucket=text("AM_INPUT_BUCKET"),
            output_bucket=text("AM_OUTPUT_BUCKET"),
            model=text("AM_MODEL"),
            endpoint_url=text("AM_ENDPOINT_URL"),
            region=text("AM_REGION", "us-east-1"),
            batch_size=_number(environ, "AM_BATCH_SIZE", int, 0),
            idle_exit_s=_number(environ, "AM_IDLE_EXIT_S", float, DEFAULT_IDLE_EXIT_S),
            visibility_timeout_s=_number(environ, "AM_VISIBILITY_TIMEOUT_S", int, DEFAULT_VISIBILITY_TIMEOUT_S),
            stop_timeout_s=_number(environ, "AM_STOP_TIMEOUT_S", float, DEFAULT_STOP_TIMEOUT_S),
            max_batch_s=_number(environ, "AM_MAX_BATCH_S", float, DEFAULT_MAX_BATCH_S),
            outage_patience_s=_number(environ, "AM_OUTAGE_PATIENCE_S", float, DEFAULT_OUTAGE_PATIENCE_S),
            threads=_number(environ, "AM_THREADS", int, 0),
            log_level=text("AM_LOG_LEVEL", "INFO").upper(),
            worker_id=text("AM_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}",
            compile=text("AM_COMPILE", "auto").lower(),
            precision=text("AM_PRECISION", "auto").lower(),
            postprocess=text("AM_POSTPROCESS", "on").lower(),
        )
        config.check()
        return config

    def check(self) -> None:
        if problem := region_problem(self.region, name="AM_REGION"):
            raise ConfigError(problem)
        if self.batch_size < 0:
            raise ConfigError(f"AM_BATCH_SIZE = {self.batch_size} must be >= 0 (0 picks one for the device)")
        if not (math.isfinite(self.idle_exit_s) and self.idle_exit_s > 0):
            raise ConfigError(f"AM_IDLE_EXIT_S = {self.idle_exit_s} must be a finite number of seconds > 0 "
                              "(for a worker that never leaves by itself, give it a long one, such as 86400)")
        if not (math.isfinite(self.stop_timeout_s) and self.stop_timeout_s > 0):
            raise ConfigError(f"AM_STOP_TIMEOUT_S = {self.stop_timeout_s} must be a finite number of seconds > 0: "
                              "the time between SIGTERM and SIGKILL that whoever runs the worker allows")
        if not (math.isfinite(self.max_batch_s) and self.max_batch_s > 0):
            raise ConfigError(f"AM_MAX_BATCH_S = {self.max_batch_s} must be a finite number of seconds > 0: the "
                              "longest a model call may run before the worker takes the device for hung")
        if not (math.isfinite(self.outage_patience_s) and self.outage_patience_s > 0):
            raise ConfigError(f"AM_OUTAGE_PATIENCE_S = {self.outage_patience_s} must be a finite number of seconds "
                              "> 0: how long the worker retries S3 while it throttles or cannot be reached before it "
                              f"gives its messages back and exits (default {DEFAULT_OUTAGE_PATIENCE_S:.0f})")
        if not 30 <= self.visibility_timeout_s <= 43200:
            raise ConfigError(f"AM_VISIBILITY_TIMEOUT_S = {self.visibility_timeout_s} must be between 30 and "
                              "43200 seconds (the SQS limit)")
        # Far beyond the machine's CPUs torch's thread pool crashes instead of refusing.
        if problem := threads_problem(self.threads, option="AM_THREADS"):
            raise ConfigError(problem)
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"AM_LOG_LEVEL = {self.log_level!r} must be one of {', '.join(LOG_LEVELS)}")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"AM_COMPILE = {self.compile!r} must be one of {', '.join(COMPILE_MODES)} "
                              "(auto compiles on CUDA only)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"AM_PRECISION = {self.precision!r} must be one of {', '.join(PRECISIONS)} "
                              "(auto is fp16 on CUDA, bf16 on a CPU with AMX, fp32 on other CPUs)")
        if self.postprocess not in POSTPROCESS_MODES:
            raise ConfigError(f"AM_POSTPROCESS = {self.postprocess!r} must be one of {', '.join(POSTPROCESS_MODES)} "
                              "(on makes masks as the model's checkpoint asks, off only thresholds)")
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ConfigError(f"AM_ENDPOINT_URL = {self.endpoint_url!r} must be an http:// or https:// URL")
        if self.input_bucket == self.output_bucket:
            raise ConfigError(f"AM_INPUT_BUCKET and AM_OUTPUT_BUCKET are both {self.input_bucket!r}: a mask is "
                              "written under its tile's key, so one bucket would overwrite the tiles; give two buckets")
        if problem := model_uri_problem(self.model, name="AM_MODEL"):
            raise ConfigError(problem)
        # Last: it may import torch, which the checks above have no need of.
        if problem := precision_problem(self.precision, name="AM_PRECISION"):
            raise ConfigError(problem)

    @property
    def stop_grace_s(self) -> float:
        """How long a stopped worker may finish its work in hand: the stop timeout less the release margin."""
        return max(0.0, self.stop_timeout_s - STOP_RELEASE_MARGIN_S)

    def batch_size_for(self, device: str) -> int:
        """The configured batch size, or the default for ``device`` ("cpu", "cuda", "cuda:0", ...)."""
        if self.batch_size:
            return self.batch_size
        return DEFAULT_BATCH_CUDA if device.startswith("cuda") else DEFAULT_BATCH_CPU


def model_uri_problem(model: str, *, name: str) -> str | None:
    """Why ``model`` (set as ``name``) is an ``s3://`` URI that names no object, or None.

    Only the URI's form is checked: whether the object exists is S3's to say, once it can be reached.
    """
    if not model.startswith("s3://"):
        return None
    from am.transport.storage import parse_s3_uri

    try:
        parse_s3_uri(model)
    except InputError as exc:
        return (f"{name} = {model!r} is not a model's location: {exc}; set {name} to the s3:// URI of an uploaded "
                "checkpoint (on AWS, the stack's ModelUri output) or to a local checkpoint file")
    return None


def precision_problem(precision: str, *, name: str) -> str | None:
    """Why ``precision`` (set as ``name``) cannot run on the device a worker on this machine takes, or None.

    A worker takes CUDA where torch finds it and the CPU elsewhere (:func:`am.model.device.resolve_device`),
    and :func:`am.model.precision.resolve_precision` decides what runs there. Only fp16 needs a device
    (auto and fp32 run anywhere, bf16 too, if slowly on a CPU without AMX), so only fp16 imports torch to
    ask: the orchestrator checks its local workers' settings with this, and need not load torch itself.
    """
    if precision != "fp16":
        return None
    from am.model.device import resolve_device
    from am.model.precision import resolve_precision

    device = str(resolve_device(None))
    try:
        resolve_precision(precision, device, warn=False)
    except InputError as exc:
        return (f"{name} = {precision!r} cannot be used on this machine ({exc}): set {name} to auto or fp32, or "
                "leave it unset")
    return None


def _number(environ: Mapping[str, str], name: str, typ: Callable[[str], N], default: N) -> N:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return typ(raw)
    except ValueError as exc:
        kind = "whole number" if typ is int else "number"
        raise ConfigError(f"environment variable {name} = {raw!r} is not a valid {kind}") from exc


__all__ = ["COMPILE_MODES", "DEFAULT_OUTAGE_PATIENCE_S", "DEFAULT_STOP_TIMEOUT_S", "PRECISIONS", "REQUIRED",
           "STOP_RELEASE_MARGIN_S", "WorkerConfig", "model_uri_problem", "precision_problem"]
