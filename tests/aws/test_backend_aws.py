"""The aws backend against the stack on moto: which model, how many tries a tile gets, what a
failing stop does to the error that ended a job, and what a missing model says."""

from __future__ import annotations

import logging

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from am.backends import check_model_object, open_aws_backend
from am.dataset import DatasetLayout
from am.errors import ConfigError, JobFailed, LauncherError, MissingBucket, MissingObject, TransportError
from am.job import Job
from am.messages import TileResult, tile_name, tiles_key
from am.model_source import resolve_model
from am.settings import Settings
from am.tilepack import pack_masks
from am.transport.clients import ClientFactory
from am.transport.queue import Queue, create_results_queue
from am.transport.retry import RetryPolicy
from am.transport.storage import Storage
from tests.aws.conftest import (
    REGION,
    STACK,
    RecordingEcs,
    add_gpu_hosts,
    client,
    deploy_stack,
    register_small_task_definition,
)

JOB = "20261203-120000-abc123"


def _upload_model(uri: str, data: bytes = b"checkpoint") -> None:
    bucket, key = uri[len("s3://"):].split("/", 1)
    client("s3").put_object(Bucket=bucket, Key=key, Body=data)


# ------------------------------------------------------------------------------ the model


def test_an_unset_model_on_aws_is_the_stacks_model_uri(aws, stack, tmp_path) -> None:
    settings = Settings(backend="aws", stack_name=STACK, region=REGION)
    _upload_model(stack["ModelUri"])
    model, model_id = resolve_model(settings, cache_dir=tmp_path)
    assert model == stack["ModelUri"] and model_id.startswith(stack["ModelUri"] + "@")
    with open_aws_backend(settings, model=model) as backend:
        assert backend.model == backend.worker_environment["AM_MODEL"] == stack["ModelUri"]


def test_an_s3_models_identity_changes_when_a_checkpoint_replaces_it_under_the_same_key(aws, stack, tmp_path):
    """make upload-model always writes the stack's ModelUri: the URI alone would let a rerun reuse stale masks."""
    settings = Settings(backend="aws", stack_name=STACK, region=REGION, model=stack["ModelUri"])
    _upload_model(stack["ModelUri"], b"weights v1")
    first = resolve_model(settings, cache_dir=tmp_path)
    _upload_model(stack["ModelUri"], b"weights v1")
    assert resolve_model(settings, cache_dir=tmp_path) == first, "the same bytes uploaded again are the same model"
    _upload_model(stack["ModelUri"], b"weights v2")
    model, model_id = resolve_model(settings, cache_dir=tmp_path)
    assert model == first[0] == stack["ModelUri"] and model_id != first[1]


def test_a_missing_s3_model_is_refused_while_its_identity_is_read(aws, stack, tmp_path) -> None:
    uri = stack["ModelUri"].rsplit("/", 1)[0] + "/typo.pt"
    with pytest.raises(ConfigError, match=rf"model {uri} cannot be used by the ECS workers.*make upload-model"):
        resolve_model(Settings(backend="aws", stack_name=STACK, region=REGION, model=uri), cache_dir=tmp_path)


def test_a_local_model_file_on_aws_is_refused_before_it_is_loaded(aws, stack, tiny_model, tmp_path) -> None:
    settings = Settings(backend="aws", stack_name=STACK, model=str(tiny_model))
    with pytest.raises(ConfigError, match="local file, which ECS workers cannot read.*make upload-model"):
        resolve_model(settings, cache_dir=tmp_path)
    assert not (tmp_path / "checked-models").exists(), "the checkpoint was checked (torch imported) for nothing"


def test_no_model_and_no_stack_says_what_to_set(aws, tmp_path) -> None:
    with pytest.raises(ConfigError, match="set stack_name .* or pass --model s3://"):
        resolve_model(Settings(backend="aws"), cache_dir=tmp_path)


def test_a_missing_model_object_is_refused_before_any_task_starts(aws, stack, monkeypatch) -> None:
    ecs = RecordingEcs(client("ecs"))
    monkeypatch.setattr(ClientFactory, "ecs", lambda self: ecs)
    uri = f"s3://{stack['ModelBucket']}/models/am-segm-typo.pt"
    expected = rf"model {uri} cannot be used by the ECS workers: {uri} does not exist.*make upload-model"
    with pytest.raises(ConfigError, match=expected), open_aws_backend(Settings(backend="aws", stack_name=STACK),
                                                                      model=uri):
        pytest.fail("the backend opened with a model that is not there")
    assert ecs.calls == []


@pytest.mark.parametrize(("setting", "output"), [("input_bucket", "InputBucket"), ("output_bucket", "OutputBucket")])
def test_a_missing_bucket_is_refused_naming_its_setting_before_any_task_starts(aws, stack, monkeypatch, setting,
                                                                             output) -> None:
    # Found later, the first upload fails after a GPU task was launched; a missing mask bucket only
    # once the workers fail on every tile.
    ecs = RecordingEcs(client("ecs"))
    monkeypatch.setattr(ClientFactory, "ecs", lambda self: ecs)
    uri = f"s3://{stack['ModelBucket']}/models/m.pt"
    client("s3").put_object(Bucket=stack["ModelBucket"], Key="models/m.pt", Body=b"weights")
    missing = f"{stack[output]}-gone"
    settings = Settings(backend="aws", stack_name=STACK, **{setting: missing})
    expected = rf"bucket {missing} \({setting}: the stack's {output} output, or AM_{setting.upper()} .*does not exist"
    with pytest.raises(ConfigError, match=expected), open_aws_backend(settings, model=uri):
        pytest.fail("the backend opened with a bucket that is not there")
    assert ecs.calls == []


@pytest.mark.parametrize("where", ["s3://{bucket}/experiments/m.pt", "s3://someone-elses-bucket/models/m.pt"])
def test_a_model_the_workers_may_not_read_is_refused_before_any_task_starts(aws, stack, monkeypatch, where) -> None:
    # The operator can read it (so its HEAD passes), but the task role reads only models/ of the
    # stack's model bucket: every task would fail with AccessDenied after its GPU instance started.
    ecs = RecordingEcs(client("ecs"))
    monkeypatch.setattr(ClientFactory, "ecs", lambda self: ecs)
    uri = where.format(bucket=stack["ModelBucket"])
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    if bucket == stack["ModelBucket"]:
        client("s3").put_object(Bucket=bucket, Key=key, Body=b"weights")
    expected = rf"model {uri} is outside s3://{stack['ModelBucket']}/models/, the only place .* workers may read"
    with pytest.raises(ConfigError, match=expected), open_aws_backend(Settings(backend="aws", stack_name=STACK),
                                                                      model=uri):
        pytest.fail("the backend opened with a model its workers cannot read")
    assert ecs.calls == []


def test_a_read_refused_with_403_says_a_missing_key_looks_the_same() -> None:
    """What workers see for a mistyped key: they may read models/* but not list the bucket."""
    s3 = boto3.client("s3", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(s3) as stub:
        stub.add_client_error("head_object", service_error_code="403", service_message="Forbidden",
                              http_status_code=403)
        with pytest.raises(TransportError, match=r"s3://m/models/typo.pt cannot be read: access denied \(HTTP 403\)"
                                                 r".*answers 403 also for a key that does not exist"):
            Storage(s3, retry=RetryPolicy(attempts=1)).head_object("s3://m/models/typo.pt")


def test_a_model_in_a_tile_bucket_is_refused_before_any_task_starts(aws, stack, monkeypatch) -> None:
    # Every worker refuses to read a checkpoint where tiles and masks live (am.messages.model_in_tile_bucket).
    ecs = RecordingEcs(client("ecs"))
    monkeypatch.setattr(ClientFactory, "ecs", lambda self: ecs)
    uri = f"s3://{stack['ModelBucket']}/models/m.pt"
    client("s3").put_object(Bucket=stack["ModelBucket"], Key="models/m.pt", Body=b"weights")
    settings = Settings(backend="aws", stack_name=STACK, input_bucket=stack["ModelBucket"])
    expected = rf"model {uri}: it lies in the workers' input bucket {stack['ModelBucket']}, which holds tiles"
    with pytest.raises(ConfigError, match=expected), open_aws_backend(settings, model=uri):
        pytest.fail("the backend opened with a model its workers refuse")
    assert ecs.calls == []


# ------------------------------------------------------------------ tries per tile


def test_the_tile_queues_max_receive_count_decides_how_often_a_tile_is_tried(aws, tmp_path) -> None:
    """A stack deployed with MaxReceiveCount=5 retries a tile five times: the job must not give up after three."""
    stack = deploy_stack(parameters={"MaxReceiveCount": "5"})
    uri = f"s3://{stack['ModelBucket']}/models/m.pt"
    _upload_model(uri)
    settings = Settings(backend="aws", stack_name=STACK, tiles_per_message=1)
    assert settings.max_receive_count == 3
    with open_aws_backend(settings, model=uri) as backend:
        assert backend.max_receive_count == 5
        sqs = backend.clients.sqs()
        results_url = create_results_queue(sqs, prefix=settings.results_queue_prefix, job=JOB)
        job = Job(backend, results_url=results_url, layout=DatasetLayout(tmp_path / "ds"), settings=settings,
                  job_id=JOB, show_progress=False)
        assert job.tracker.max_attempts == 5
        job.send("g", [(0, np.zeros((settings.tile_size, settings.tile_size), np.uint8))])
        job._finish_sending()
        tiles, results = Queue(sqs, backend.queue_url), Queue(sqs, results_url)
        report = {"job": JOB, "group": "g", "tiles": (0,), "worker": "w"}
        for _ in range(3):  # a worker fails the tile three times and says so each time
            [received] = tiles.receive(max_messages=1, wait_s=0, visibility_timeout=0)
            results.send_many([TileResult(status="failed", attempt=received.receive_count, error="transient",
                                          **report).to_json()])
            job.collect()
        assert job.tracker.dead == {} and job.tracker.pending == {tile_name("g", 0)}
        [received] = tiles.receive(max_messages=1, wait_s=0)  # SQS hands it out a fourth time
        masks = np.zeros((1, settings.tile_size, settings.tile_size), np.uint8)
        Storage(backend.clients.s3()).put_bytes(backend.output_bucket, tiles_key(JOB, "g", (0,)), pack_masks(masks))
        results.send_many([TileResult(status="done", attempt=received.receive_count, **report).to_json()])
        job.collect()
        assert job.tracker.completed == {tile_name("g", 0)} and job.tracker.duplicates == 0
        job.seal()
        job.close(after_failure=False)


# ---------------------------------------------------------------- stopping workers


@pytest.fixture
def denied_stop(aws, stack, monkeypatch) -> tuple[RecordingEcs, Settings]:
    """The stack with a GPU host, a model in place, and an ECS client whose StopTask is refused."""
    add_gpu_hosts(stack["Cluster"], 1)
    ecs = RecordingEcs(client("ecs"))
    denied = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized: ecs:StopTask"}},
                         "StopTask")
    ecs.injected["stop_task"] = [denied] * 4
    monkeypatch.setattr(ClientFactory, "ecs", lambda self: ecs)
    uri = f"s3://{stack['ModelBucket']}/models/m.pt"
    _upload_model(uri)
    settings = Settings(backend="aws", stack_name=STACK, model=uri,
                        ecs_task_definition=register_small_task_definition(queue_url=stack["QueueUrl"]))
    return ecs, settings


def test_a_failing_stop_does_not_replace_the_error_that_ended_the_job(denied_stop, caplog) -> None:
    ecs, settings = denied_stop
    failure = JobFailed("2 of 40 tile(s) failed:\n  g1/0007: failed 3 times, last error: CUDA OOM", {})
    with caplog.at_level(logging.ERROR, logger="am.backends"), pytest.raises(JobFailed) as raised, \
            open_aws_backend(settings, model=settings.model) as backend:
        backend.launcher.start(1, backend.worker_environment)
        raise failure
    assert raised.value is failure
    assert len(ecs.named("stop_task")) == 1
    [record] = [r for r in caplog.records if "could not stop the workers" in r.getMessage()]
    assert record.exc_info is not None and isinstance(record.exc_info[1], LauncherError)
    assert "ecs:StopTask" in str(record.exc_info[1])


def test_a_failing_stop_after_a_success_is_raised(denied_stop) -> None:
    _, settings = denied_stop
    with pytest.raises(LauncherError, match="could not stop 1 worker task"), \
            open_aws_backend(settings, model=settings.model) as backend:
        backend.launcher.start(1, backend.worker_environment)


def test_a_job_timeout_or_ctrl_c_survives_a_failing_stop(denied_stop) -> None:
    _, settings = denied_stop
    with pytest.raises(KeyboardInterrupt), open_aws_backend(settings, model=settings.model) as backend:
        backend.launcher.start(1, backend.worker_environment)
        raise KeyboardInterrupt


def test_workers_hide_a_tile_for_the_stacks_visibility_timeout_unless_the_settings_set_one(aws, stack) -> None:
    # A stack deployed with VisibilityTimeoutSeconds=600 gave run_task workers the settings' default
    # 120 s all the same (workers pass it on every receive), unlike the service's workers.
    client("sqs").set_queue_attributes(QueueUrl=stack["QueueUrl"], Attributes={"VisibilityTimeout": "600"})
    uri = stack["ModelUri"]
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    client("s3").put_object(Bucket=bucket, Key=key, Body=b"weights")
    for settings, expected in ((Settings(backend="aws", stack_name=STACK), "600"),
                               (Settings(backend="aws", stack_name=STACK, visibility_timeout_s=300), "300")):
        with open_aws_backend(settings, model=uri) as backend:
            assert backend.worker_environment["AM_VISIBILITY_TIMEOUT_S"] == expected


class _Refusing:
    """A Storage whose HEAD fails with ``error``, as S3 answers when credentials or the network fail."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def head_object(self, uri: str) -> dict:
        raise self.error


@pytest.mark.parametrize(("error", "upload_advised"), [
    (TransportError("head s3://b/models/m.pt failed 6 time(s), giving up; last error: NoCredentialsError: Unable "
                    "to locate credentials"), False),
    (MissingBucket("bucket b does not exist (reading models/m.pt); create it or fix the name"), True),
    (MissingObject("s3://b/models/m.pt does not exist; check the key or upload the object"), True),
])
def test_only_a_missing_model_is_met_with_the_advice_to_upload_it(error, upload_advised) -> None:
    with pytest.raises(ConfigError) as raised:
        check_model_object(_Refusing(error), "s3://b/models/m.pt")
    assert str(error) in str(raised.value)
    assert ("make upload-model" in str(raised.value)) == upload_advised
