"""Backends: where the queues and buckets are, and how workers start. Nothing else differs.

``local`` starts the embedded endpoint, creates buckets and queues on it, and runs worker
subprocesses; ``aws`` finds the stack's resources and runs ECS tasks. The orchestrator talks
to both through :class:`Backend`::

    with open_backend(settings, model=model_uri, log_dir=tmp) as backend:
        backend.launcher.start(settings.workers, backend.worker_environment)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from am.errors import ConfigError
from am.launchers import Launcher
from am.settings import Settings
from am.transport.clients import ClientFactory
from am.transport.queue import ensure_tile_queues
from am.transport.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class Backend:
    """Everything a job needs to run, whatever the backend."""

    name: str
    clients: ClientFactory
    launcher: Launcher
    queue_url: str
    dead_letter_queue_url: str
    input_bucket: str
    output_bucket: str
    model: str
    worker_environment: dict[str, str] = field(default_factory=dict)


def worker_threads(settings: Settings, *, cpu_count: int | None = None) -> int:
    """Intra-op threads per local worker: share the cores instead of oversubscribing them."""
    if settings.worker_threads:
        return settings.worker_threads
    cores = cpu_count or os.cpu_count() or 1
    return max(1, cores // settings.workers)


def _worker_environment(settings: Settings, *, queue_url: str, input_bucket: str, output_bucket: str,
                        model: str, endpoint_url: str, threads: int) -> dict[str, str]:
    env = {
        "AM_QUEUE_URL": queue_url,
        "AM_INPUT_BUCKET": input_bucket,
        "AM_OUTPUT_BUCKET": output_bucket,
        "AM_MODEL": model,
        "AM_REGION": settings.region,
        "AM_BATCH_SIZE": str(settings.batch_size),
        "AM_IDLE_EXIT_S": str(settings.idle_exit_s),
        "AM_VISIBILITY_TIMEOUT_S": str(settings.visibility_timeout_s),
        "AM_LOG_LEVEL": settings.log_level,
    }
    if threads:
        env["AM_THREADS"] = str(threads)
    if endpoint_url:
        env["AM_ENDPOINT_URL"] = endpoint_url
    return env


@contextmanager
def open_local_backend(settings: Settings, *, model: str, log_dir: Path,
                       base_environment: Mapping[str, str]) -> Iterator[Backend]:
    from am.endpoint import EmbeddedEndpoint
    from am.launchers.local import LocalLauncher

    with ExitStack() as stack:
        if settings.endpoint_url:
            endpoint_url = settings.endpoint_url
            log.info("local backend using the configured endpoint %s", endpoint_url)
        else:
            endpoint_url = stack.enter_context(EmbeddedEndpoint()).url
        clients = ClientFactory(endpoint_url=endpoint_url, region=settings.region)
        storage = Storage(clients.s3(), threads=settings.transfer_threads)
        storage.ensure_bucket(settings.input_bucket)
        storage.ensure_bucket(settings.output_bucket)
        queue_url, dlq_url = ensure_tile_queues(
            clients.sqs(),
            name=settings.queue_name,
            dead_letter_name=settings.dead_letter_queue_name,
            visibility_timeout_s=settings.visibility_timeout_s,
            max_receive_count=settings.max_receive_count,
        )
        launcher = LocalLauncher(log_dir=log_dir, base_environment=base_environment)
        stack.callback(launcher.stop)
        env = _worker_environment(
            settings, queue_url=queue_url, input_bucket=settings.input_bucket,
            output_bucket=settings.output_bucket, model=model, endpoint_url=endpoint_url,
            threads=worker_threads(settings),
        )
        yield Backend("local", clients, launcher, queue_url, dlq_url, settings.input_bucket,
                      settings.output_bucket, model, env)


@contextmanager
def open_aws_backend(settings: Settings, *, model: str) -> Iterator[Backend]:
    from am.launchers.aws import EcsLauncher, resolve_aws_resources

    clients = ClientFactory(endpoint_url=settings.endpoint_url, region=settings.region)
    resources = resolve_aws_resources(settings, cloudformation_client=clients.cloudformation(),
                                      sqs_client=clients.sqs())
    model = model or resources.model_uri
    if not model.startswith("s3://"):
        raise ConfigError(
            f"model {model or '(none)'!r} cannot be read by ECS workers: with --backend aws pass "
            "--model s3://BUCKET/KEY (upload the checkpoint first), or set the stack's model output"
        )
    launcher = EcsLauncher(clients.ecs(), resources, mode=settings.aws_launch, max_tasks=settings.aws_max_tasks)
    env = _worker_environment(
        settings, queue_url=resources.queue_url, input_bucket=resources.input_bucket,
        output_bucket=resources.output_bucket, model=model, endpoint_url=settings.endpoint_url,
        threads=settings.worker_threads,
    )
    try:
        yield Backend("aws", clients, launcher, resources.queue_url, resources.dead_letter_queue_url,
                      resources.input_bucket, resources.output_bucket, model, env)
    finally:
        launcher.stop()


@contextmanager
def open_backend(settings: Settings, *, model: str, log_dir: Path,
                 base_environment: Mapping[str, str] | None = None) -> Iterator[Backend]:
    """Open the configured backend; closing it stops every worker it started."""
    if settings.backend == "local":
        with open_local_backend(settings, model=model, log_dir=log_dir,
                                base_environment=dict(base_environment or os.environ)) as backend:
            yield backend
    else:
        with open_aws_backend(settings, model=model) as backend:
            yield backend
