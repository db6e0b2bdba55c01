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
from typing import TYPE_CHECKING, Any

from am.errors import ConfigError, InputError, MissingBucket, MissingObject, TransportError
from am.launchers import Launcher
from am.messages import model_in_tile_bucket
from am.settings import Settings
from am.transport.clients import EMBEDDED_REGION, ClientFactory, embedded_worker_variables
from am.transport.queue import delete_queue, ensure_tile_queues
from am.transport.retry import RetryPolicy
from am.transport.storage import NamedBucket, Storage, require_existing_buckets

if TYPE_CHECKING:
    from am.launchers.aws_stack import AwsResources

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
    # Receives before the tile queue dead-letters a tile; 0: the settings' max_receive_count.
    max_receive_count: int = 0


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


def check_local_worker_environment(environ: Mapping[str, str]) -> None:
    """Refuse, before any local worker starts, an AM_* variable in ``environ`` that every one of them would.

    Local workers inherit the orchestrator's environment, over which the backend and the launcher set
    their own variables; the rest (AM_MAX_BATCH_S, AM_PRECISION, ...) reach them as they are. One they
    refuse made each worker exit 2 some seconds into the job, which then failed as "workers stopped"
    with a hint to rerun. Checked here by the workers' own parsing (:class:`WorkerConfig`), with what
    the backend and launcher set in place of their variables: their values in ``environ`` never reach
    a worker (the settings check those that are settings).
    """
    from am.launchers.local import launcher_variables
    from am.worker.config import WorkerConfig

    given = _worker_environment(Settings(), queue_url="http://127.0.0.1/queue", input_bucket="input",
                                output_bucket="output", model="", endpoint_url="http://127.0.0.1", threads=1)
    try:
        WorkerConfig.from_environ({**environ, **given, **launcher_variables(0)})
    except ConfigError as exc:
        raise ConfigError(f"{exc} (the local workers read it from this command's environment: fix or unset it, "
                          "then rerun)") from exc


@contextmanager
def open_local_backend(settings: Settings, *, model: str, log_dir: Path,
                       base_environment: Mapping[str, str]) -> Iterator[Backend]:
    """The embedded endpoint (or ``endpoint_url``) with worker processes on this machine: the same
    S3/SQS calls as on AWS, so a laptop run exercises the code path a deployment runs."""
    from am.endpoint import EmbeddedEndpoint
    from am.launchers.local import LocalLauncher

    with ExitStack() as stack:
        if settings.endpoint_url:
            endpoint_url = settings.endpoint_url
            log.info("local backend using the configured endpoint %s", endpoint_url)
        else:
            if settings.keep_job_data:
                log.warning("keep_job_data has no effect on the embedded endpoint: its objects go when it stops at "
                            "the end of the run (set endpoint_url to an S3 endpoint that outlives the run)")
            # Its URL reaches only this process's clients and the workers started below, which carry its token.
            endpoint_url = stack.enter_context(EmbeddedEndpoint(require_token=True)).url
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
        if not settings.endpoint_url:
            # Run after the workers stop, before the endpoint does (an ExitStack unwinds in reverse).
            stack.callback(_forget_tile_queues, clients.sqs(), (queue_url, dlq_url))
        # Only the embedded endpoint is known to accept any key; a configured one may check them.
        launcher = LocalLauncher(log_dir=log_dir, base_environment=base_environment,
                                 strip_credentials=not settings.endpoint_url)
        stack.enter_context(_stopping(launcher))
        threads = worker_threads(settings)
        _warn_replaced_threads(base_environment, threads)
        env = _worker_environment(
            settings, queue_url=queue_url, input_bucket=settings.input_bucket,
            output_bucket=settings.output_bucket, model=model, endpoint_url=endpoint_url,
            threads=threads,
        )
        if not settings.endpoint_url:
            env.update(_embedded_worker_environment(endpoint_url))
        yield Backend("local", clients, launcher, queue_url, dlq_url, settings.input_bucket,
                      settings.output_bucket, model, env, max_receive_count=settings.max_receive_count)


def _embedded_worker_environment(endpoint_url: str) -> dict[str, str]:
    """What workers of the embedded endpoint are told over the usual: which endpoint is the embedded one (so
    their clients use no proxy and none of the user's AWS set-up) and its region, which means nothing there
    (moto serves real region names only: AWS_REGION=localhost answered every request with an HTML 500)."""
    return {**embedded_worker_variables(endpoint_url), "AM_REGION": EMBEDDED_REGION}


def _warn_replaced_threads(base_environment: Mapping[str, str], threads: int) -> None:
    """AM_THREADS is am.worker's own variable, which the local backend sets from worker_threads: one a
    user gives am.pipeline never reaches its workers, and no other warning says so (settings take it
    for a worker variable, which it is)."""
    given = base_environment.get("AM_THREADS", "").strip()
    if given:
        log.warning("environment variable AM_THREADS = %r does not reach the local workers: they run with %d "
                    "torch thread(s) each, from the worker_threads setting; set worker_threads (AM_WORKER_THREADS "
                    "or worker_threads in the config file) instead", given, threads)


def _forget_tile_queues(sqs_client: Any, urls: tuple[str, ...]) -> None:
    """Delete the embedded endpoint's tile queues as it stops.

    moto keeps its state process-wide, and a request still being served when the endpoint stops (a
    stopped worker's 20 s long poll, its client gone) goes on polling. A later run in the same
    process (a test, a notebook) would create a queue of the same name and that request would take
    one of its messages, hidden for the visibility timeout: 120 s in which a job of a few tiles
    waits. Deleted, the queue the request polls is one that nobody uses again.
    """
    for url in urls:
        try:
            # One attempt: the endpoint goes with this process, and a job's own error must not wait on it.
            delete_queue(sqs_client, url, retry=RetryPolicy(attempts=1))
        except TransportError as exc:
            log.warning("could not delete the queue %s of the embedded endpoint as it stopped (%s): a later run "
                        "in this process may wait a visibility timeout for one of its messages", url, exc)


@contextmanager
def _stopping(launcher: Launcher) -> Iterator[None]:
    """Stop the launcher's workers when the block ends, without hiding the error that ended it.

    A stop that fails after a success is raised: workers may still be running (and costing).
    While another exception is on its way (a JobFailed naming tiles, a timeout, Ctrl-C), that
    one is what the user must read, so the stop failure is logged with its traceback instead.
    """
    try:
        yield
    except BaseException:
        try:
            launcher.stop()
        except Exception:
            log.exception("could not stop the workers while the job was ending with an error; "
                          "check for workers still running")
        raise
    launcher.stop()


def stack_model_uri(settings: Settings) -> str:
    """What an unset ``model`` means on the aws backend: the stack's ``ModelUri`` output.

    The checkpoint shipped in the package is on the orchestrator's disk, where ECS workers
    cannot read it; ``make upload-model`` puts one at the stack's ModelUri instead.
    """
    from am.launchers.aws_stack import read_stack_outputs

    if not settings.stack_name:
        raise ConfigError("no model for the aws backend: set stack_name (its ModelUri output names the model) "
                          "or pass --model s3://BUCKET/KEY of an uploaded checkpoint")
    clients = ClientFactory(endpoint_url=settings.endpoint_url, region=settings.region)
    uri = read_stack_outputs(clients.cloudformation(), settings.stack_name).get("ModelUri", "")
    if not uri.startswith("s3://"):
        raise ConfigError(f"stack {settings.stack_name!r} has no ModelUri output (got {uri!r}): pass "
                          "--model s3://BUCKET/KEY of an uploaded checkpoint, or redeploy the stack (make deploy)")
    return uri


def check_model_readable_by_workers(model: str, stack_model_uri: str) -> None:
    """Refuse a model outside the folder of the stack's ModelUri (``s3://<ModelBucket>/models/``), the
    only place the task role lets workers read: the operator's own credentials may read it, so the
    HEAD below passes, and every task would then fail with AccessDenied after its instance started."""
    if not stack_model_uri:
        return  # no stack ModelUri (resources given by hand): nothing says where workers may read
    folder = stack_model_uri.rsplit("/", 1)[0] + "/"
    if not model.startswith(folder):
        raise ConfigError(
            f"model {model} is outside {folder}, the only place the stack's workers may read checkpoints "
            f"from: upload it there (`make upload-model MODEL=path.pt` writes {stack_model_uri}) and pass that URI"
        )


def check_model_object(storage: Storage, model: str) -> dict[str, Any]:
    """The HeadObject of a model in S3; refuses one that is not there before any ECS task starts, naming its URI.

    Workers may read models/* of the model bucket but not list it, so S3 answers them 403 for a
    missing key: a mistyped URI would show only as access errors in worker logs, after GPU
    instances had started. The operator's credentials may list the bucket and get a clear 404.
    """
    try:
        return storage.head_object(model)
    except (InputError, MissingObject, MissingBucket) as exc:
        raise ConfigError(
            f"model {model} cannot be used by the ECS workers: {exc}. Upload the checkpoint with "
            "`make upload-model MODEL=path.pt` (to the stack's ModelUri) or pass --model with the s3:// URI "
            "of one already uploaded under models/ in the stack's model bucket"
        ) from exc
    except TransportError as exc:  # credentials, a refusal, the network: uploading would not help
        raise ConfigError(f"model {model} cannot be checked before the ECS workers start: {exc}") from exc


def require_dead_letter_queue(resources: AwsResources) -> None:
    """Refuse a tile queue without a dead-letter queue (no RedrivePolicy), before any task starts.

    SQS keeps a message that nobody deletes for the queue's whole retention period (4 days by
    default, up to 14) unless a redrive policy moves it to a dead-letter queue after
    ``maxReceiveCount`` receives. Without one, a tile that fails every time, or a message no
    worker accepts, goes back to the workers again and again for days: it keeps them from
    leaving idle, costs a receive per backoff, and never reaches the orchestrator's dead-letter
    scan, which is how a job learns by name which tiles will not complete.
    """
    if not resources.max_receive_count:
        raise ConfigError(
            f"tile queue {resources.queue_url} has no dead-letter queue (no RedrivePolicy): a tile that cannot be "
            "processed would go back to the workers for the queue's whole retention period and never be reported. "
            "Use the stack's queues (set stack_name; make deploy creates them), or give the queue a RedrivePolicy "
            f"to {resources.dead_letter_queue_url} (aws sqs set-queue-attributes)"
        )


def require_buckets(storage: Storage, resources: AwsResources) -> None:
    """Refuse a tile or mask bucket that does not exist, naming its setting, before any task starts:
    found later, the first upload fails after a GPU task was launched (and an instance started for
    it), or, for the mask bucket, only once the workers fail on every tile. A bucket that cannot be checked is
    refused too: no task has started yet, and the operator can fix their credentials or network first."""

    def refuse(named: NamedBucket, exc: TransportError) -> None:
        raise ConfigError(f"bucket {named.bucket} ({named.setting}) cannot be checked before the ECS workers start: "
                          f"{exc}") from exc

    require_existing_buckets(
        storage,
        (NamedBucket(resources.input_bucket, "input_bucket", "InputBucket"),
         NamedBucket(resources.output_bucket, "output_bucket", "OutputBucket")),
        missing=lambda named: (f"bucket {named.bucket} ({named.setting}: the stack's {named.output} output, or "
                               f"AM_{named.setting.upper()} or the config file) does not exist; deploy the stack "
                               f"(make deploy), or set {named.setting} to an existing bucket"),
        unchecked=refuse,
    )


@contextmanager
def open_aws_backend(settings: Settings, *, model: str) -> Iterator[Backend]:
    """Real S3/SQS and ECS tasks, checked before any task starts (queues, dead-letter policy, buckets, model),
    so a misconfigured deployment fails in seconds rather than after the tiles are uploaded."""
    from am.launchers.aws import EcsLauncher
    from am.launchers.aws_stack import resolve_aws_resources

    clients = ClientFactory(endpoint_url=settings.endpoint_url, region=settings.region)
    resources = resolve_aws_resources(settings, cloudformation_client=clients.cloudformation(),
                                      sqs_client=clients.sqs())
    require_dead_letter_queue(resources)
    model = model or resources.model_uri
    if not model.startswith("s3://"):
        raise ConfigError(
            f"model {model or '(none)'!r} cannot be read by ECS workers: with --backend aws pass "
            "--model s3://BUCKET/KEY (upload the checkpoint first), or leave model unset to use the stack's "
            "ModelUri output"
        )
    check_model_readable_by_workers(model, resources.model_uri)
    if problem := model_in_tile_bucket(model, input_bucket=resources.input_bucket,
                                       output_bucket=resources.output_bucket):
        raise ConfigError(f"model {model}: {problem}")  # every worker would refuse it
    storage = Storage(clients.s3(), threads=1)
    require_buckets(storage, resources)
    check_model_object(storage, model)
    launcher = EcsLauncher(clients.ecs(), resources, mode=settings.aws_launch, max_tasks=settings.aws_max_tasks)
    env = _worker_environment(
        settings, queue_url=resources.queue_url, input_bucket=resources.input_bucket,
        output_bucket=resources.output_bucket, model=model, endpoint_url=settings.endpoint_url,
        threads=settings.worker_threads,
    )
    if resources.visibility_timeout_s:
        # The stack's queue decides, as it does for the service's workers, unless the settings say otherwise.
        env["AM_VISIBILITY_TIMEOUT_S"] = str(resources.visibility_timeout_s)
    with _stopping(launcher):
        yield Backend("aws", clients, launcher, resources.queue_url, resources.dead_letter_queue_url,
                      resources.input_bucket, resources.output_bucket, model, env,
                      max_receive_count=resources.max_receive_count)


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
