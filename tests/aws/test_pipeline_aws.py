"""The orchestrator with ``--backend aws`` against moto, with worker logic run in-process.

moto plays AWS (CloudFormation stack, S3, SQS, ECS with a registered GPU host). What moto
cannot do is run a container, so :class:`InProcessAgent` plays the ECS agent: for every task
``run_task`` starts, it runs the worker the container would run (``am.worker``'s
``build_worker`` with the task's environment: task definition plus overrides) on a thread;
``stop_task`` stops that worker the way ECS does (first SIGTERM: finish the batch, exit), and
a worker that exits by itself stops its task. ``describe_tasks`` then tells the two apart as ECS
does, which moto cannot (it runs no container): stopCode ``EssentialContainerExited`` or
``UserInitiated``, and the container's exit code once the worker has returned.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from am.errors import AmError, ConfigError, LauncherError
from am.imageio import read_image
from am.launchers.aws import MAX_TASKS_PER_RUN_TASK, SELF_EXIT_STOP_CODE, STOP_REASON
from am.orchestrator import run_pipeline
from am.prepare import GroupTiler
from am.settings import Settings
from am.transport.clients import ClientFactory
from am.worker.__main__ import build_worker
from am.worker.config import WorkerConfig
from tests.aws.conftest import STACK, add_gpu_hosts, client, register_small_task_definition

CREDENTIAL_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
JOIN_S = 60


class InProcessAgent:
    """An ECS client (moto's) whose tasks run ``am.worker`` in this process; records the calls it sees.

    What ECS does by itself (read the task definition of a task it runs, stop a task whose
    container exited) goes through ``internal``, so a test recording the calls the code under
    test makes can leave those out.
    """

    def __init__(self, ecs: Any, *, internal: Any = None) -> None:
        self._ecs = ecs
        self._internal = internal if internal is not None else ecs
        self.run_calls: list[dict[str, Any]] = []
        self.workers: dict[str, tuple[Any, threading.Thread]] = {}
        self.exit_codes: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.stop_reasons: dict[str, str] = {}
        self.stop_codes: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ecs, name)

    def run_task(self, **kwargs: Any) -> dict[str, Any]:
        self.run_calls.append(kwargs)
        response = self._ecs.run_task(**kwargs)
        definition = self._internal.describe_task_definition(taskDefinition=kwargs["taskDefinition"])["taskDefinition"]
        for task in response["tasks"]:
            self._start(task, definition)
        return response

    def stop_task(self, **kwargs: Any) -> dict[str, Any]:
        response = self._ecs.stop_task(**kwargs)
        self.stop_reasons.setdefault(response["task"]["taskArn"], kwargs.get("reason", ""))
        self.stop_codes.setdefault(response["task"]["taskArn"], "UserInitiated")
        worker = self.workers.get(response["task"]["taskArn"], (None, None))[0]
        if worker is not None:
            worker.stop()
        return response

    def describe_tasks(self, **kwargs: Any) -> dict[str, Any]:
        response = self._ecs.describe_tasks(**kwargs)
        for task in response["tasks"]:
            arn = task["taskArn"]
            if arn in self.stop_codes:
                task["stopCode"] = self.stop_codes[arn]
            for container in task.get("containers", []):
                # moto says 0 for every container; ECS gives a code only once the container has exited.
                container.pop("exitCode", None)
                if arn in self.exit_codes:
                    container["exitCode"] = self.exit_codes[arn]
        return response

    def _start(self, task: dict[str, Any], definition: dict[str, Any]) -> None:
        [container] = definition["containerDefinitions"]
        environment = {e["name"]: e["value"] for e in container.get("environment", [])}
        for override in task["overrides"]["containerOverrides"]:
            environment.update({e["name"]: e["value"] for e in override.get("environment", [])})
        environment["AM_WORKER_ID"] = task["taskArn"].rsplit("/", 1)[-1]
        arn = task["taskArn"]

        def container_main() -> None:
            try:
                worker = build_worker(WorkerConfig.from_environ(environment))
            except AmError as exc:
                self.errors[arn] = str(exc)
                self._exited(arn, 1)
                return
            self.workers[arn] = (worker, threading.current_thread())
            self._exited(arn, worker.run())

        thread = threading.Thread(target=container_main, name=f"task-{arn[-8:]}", daemon=True)
        self.workers[arn] = (None, thread)
        thread.start()

    def _exited(self, arn: str, code: int) -> None:
        """What ECS does when the essential container exits: the task stops."""
        self.exit_codes[arn] = code
        if arn not in self.stop_reasons:
            reason = "Essential container in task exited"
            self.stop_reasons.setdefault(arn, reason)
            self.stop_codes.setdefault(arn, SELF_EXIT_STOP_CODE)
            self._internal.stop_task(cluster=arn.split("/")[-2], task=arn, reason=reason)

    def join(self) -> None:
        for _worker, thread in list(self.workers.values()):
            thread.join(JOIN_S)
            assert not thread.is_alive(), "a worker did not stop"


# Set on the client the in-process ECS agent uses for what ECS itself does.
AGENT_CLIENT_TAG = "am_test_ecs_agent"


@pytest.fixture
def agent(aws, monkeypatch) -> InProcessAgent:
    internal = client("ecs")
    setattr(internal, AGENT_CLIENT_TAG, True)
    ecs = InProcessAgent(client("ecs"), internal=internal)
    monkeypatch.setattr(ClientFactory, "ecs", lambda self: ecs)
    return ecs


@pytest.fixture
def aws_settings(aws, stack, tiny_model: Path) -> Settings:
    """The stack on moto, one GPU host, the model uploaded where the stack says, settings for a small job."""
    add_gpu_hosts(stack["Cluster"], 1)
    model_key = "models/tiny.pt"
    client("s3").upload_file(str(tiny_model), stack["ModelBucket"], model_key)
    return Settings(
        backend="aws", stack_name=STACK, model=f"s3://{stack['ModelBucket']}/{model_key}", workers=3,
        tile_size=128, tile_overlap=32, idle_exit_s=30, batch_size=4, worker_threads=1,
        # The stack's task definition asks for 12 GiB, more than moto's container instances offer.
        ecs_task_definition=register_small_task_definition(queue_url=stack["QueueUrl"]),
    )


def _job_objects(stack: dict[str, str]) -> list[str]:
    s3 = client("s3")
    return [o["Key"] for bucket in (stack["InputBucket"], stack["OutputBucket"])
            for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def _results_queues() -> list[str]:
    return client("sqs").list_queues(QueueNamePrefix="am-segm-results").get("QueueUrls", [])


def test_aws_backend_segments_every_tile_with_ecs_workers_and_cleans_up(
        agent, aws_settings, stack, small_dataset, tmp_path) -> None:
    summary = run_pipeline(small_dataset, settings=aws_settings, groups=["g2"], register=False,
                           cache_dir=tmp_path / "cache", show_progress=False)
    agent.join()

    assert summary.job is not None and summary.job.completed == summary.tiles > 0
    mask = read_image(small_dataset / "tiles_stitched" / "g2" / "mask.tiff")
    assert mask.shape[:2] == (283, 245)

    # run_task: calls of at most 10, the job's settings only, never a credential.
    assert sum(call["count"] for call in agent.run_calls) == aws_settings.workers
    assert all(call["count"] <= MAX_TASKS_PER_RUN_TASK for call in agent.run_calls)
    for call in agent.run_calls:
        assert call["launchType"] == "EC2"
        [override] = call["overrides"]["containerOverrides"]
        names = {e["name"] for e in override["environment"]}
        assert all(name.startswith("AM_") for name in names)
        assert not names & set(CREDENTIAL_NAMES)
        values = {e["name"]: e["value"] for e in override["environment"]}
        assert values["AM_MODEL"] == aws_settings.model
        assert values["AM_QUEUE_URL"] == stack["QueueUrl"]
        assert values["AM_INPUT_BUCKET"] == stack["InputBucket"]
        assert "AM_ENDPOINT_URL" not in values

    # Every task the job started is stopped; no worker failed.
    arns = list(agent.workers)
    tasks = client("ecs").describe_tasks(cluster=stack["Cluster"], tasks=arns)["tasks"]
    assert len(tasks) == aws_settings.workers
    assert {t["lastStatus"] for t in tasks} == {"STOPPED"}
    assert set(agent.stop_reasons.values()) == {STOP_REASON}
    assert agent.errors == {} and set(agent.exit_codes.values()) == {0}

    # The job's prefixes and its results queue are gone.
    assert _job_objects(stack) == []
    assert _results_queues() == []


def test_when_workers_cannot_start_the_job_fails_and_still_cleans_up(
        agent, aws_settings, stack, small_dataset, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("am.job.HEALTH_CHECK_EVERY_S", 0.5)
    # In S3, so the orchestrator's check passes, but no checkpoint: every worker fails to load it.
    client("s3").put_object(Bucket=stack["ModelBucket"], Key="models/broken.pt", Body=b"not a checkpoint")
    broken = aws_settings.replace(model=f"s3://{stack['ModelBucket']}/models/broken.pt", workers=2)
    with pytest.raises(LauncherError, match=r"all workers stopped.*worker 0 exited with 1, worker 1 exited with 1"):
        run_pipeline(small_dataset, settings=broken, groups=["g2"], register=False,
                     cache_dir=tmp_path / "cache", show_progress=False)
    agent.join()
    assert len(agent.errors) == 2 and all("broken.pt" in e for e in agent.errors.values())
    assert len(agent.run_calls) == 1, "workers that failed must not be started again"
    tasks = client("ecs").describe_tasks(cluster=stack["Cluster"], tasks=list(agent.workers))["tasks"]
    assert {t["lastStatus"] for t in tasks} == {"STOPPED"}
    assert _job_objects(stack) == []
    assert _results_queues() == []


def test_a_missing_model_fails_before_any_task_starts(agent, aws_settings, stack, small_dataset, tmp_path) -> None:
    """Workers may not list the model bucket, so to them a mistyped key is a 403: the orchestrator checks first."""
    typo = f"s3://{stack['ModelBucket']}/models/am-segm-typo.pt"
    with pytest.raises(ConfigError, match=f"model {typo} cannot be used by the ECS workers: {typo} does not exist"):
        run_pipeline(small_dataset, settings=aws_settings.replace(model=typo), groups=["g2"], register=False,
                     cache_dir=tmp_path / "cache", show_progress=False)
    assert agent.run_calls == []
    assert _results_queues() == []


def test_without_a_model_setting_the_workers_load_the_stacks_model_uri(
        agent, aws_settings, stack, small_dataset, tiny_model, tmp_path) -> None:
    """README step 3 uploads to the stack's ModelUri and step 4 sets no model: that URI is the model."""
    bucket, key = stack["ModelUri"][len("s3://"):].split("/", 1)
    client("s3").upload_file(str(tiny_model), bucket, key)
    summary = run_pipeline(small_dataset, settings=aws_settings.replace(model=""), groups=["g2"], register=False,
                           cache_dir=tmp_path / "cache", show_progress=False)
    agent.join()
    assert summary.job is not None and summary.job.completed == summary.tiles > 0
    for call in agent.run_calls:
        [override] = call["overrides"]["containerOverrides"]
        assert {e["name"]: e["value"] for e in override["environment"]}["AM_MODEL"] == stack["ModelUri"]


def test_a_checkpoint_uploaded_again_under_the_same_uri_is_not_given_the_earlier_masks(
        agent, aws_settings, stack, small_dataset, tmp_path) -> None:
    """make upload-model always writes one key: a rerun after it must not keep the masks of the weights it replaced."""
    from am.dataset import DatasetLayout
    from am.model.build import write_test_checkpoint
    from am.model_source import resolve_model
    from am.prepare import reuse_group

    summary = run_pipeline(small_dataset, settings=aws_settings, groups=["g2"], register=False,
                           cache_dir=tmp_path / "cache", show_progress=False)
    agent.join()
    assert summary.job is not None and summary.job.completed == summary.tiles > 0
    layout = DatasetLayout(small_dataset)

    def reused_after_resolving() -> object:
        _, model_id = resolve_model(aws_settings, cache_dir=tmp_path / "cache")
        return reuse_group(layout, "g2", settings=aws_settings, model_id=model_id)

    assert reused_after_resolving() is not None, "the same checkpoint: every mask is reused"
    bucket, key = aws_settings.model[len("s3://"):].split("/", 1)
    client("s3").upload_file(str(write_test_checkpoint(tmp_path / "retrained.pt", seed=1)), bucket, key)
    assert reused_after_resolving() is None


def test_a_checkpoint_replaced_while_the_tiles_are_segmented_fails_the_run_before_stitching(
        agent, aws_settings, stack, small_dataset, tmp_path, monkeypatch) -> None:
    """Tiles segmented before and after an upload used two checkpoints: neither stitched nor reusable."""
    from am.dataset import DatasetLayout
    from am.errors import ModelReplaced
    from am.job import Job
    from am.model.build import write_test_checkpoint

    bucket, key = aws_settings.model[len("s3://"):].split("/", 1)
    retrained = write_test_checkpoint(tmp_path / "retrained.pt", seed=1)
    wait = Job.wait

    def wait_then_upload(job: Job) -> None:
        wait(job)
        client("s3").upload_file(str(retrained), bucket, key)

    monkeypatch.setattr(Job, "wait", wait_then_upload)
    with pytest.raises(ModelReplaced, match=rf"model s3://{bucket}/{key} was replaced while this run segmented"):
        run_pipeline(small_dataset, settings=aws_settings, groups=["g2"], register=False,
                     cache_dir=tmp_path / "cache", show_progress=False)
    agent.join()
    layout = DatasetLayout(small_dataset)
    assert not layout.tile_plan("g2").exists(), "a later run would reuse masks of two checkpoints"
    assert not (small_dataset / "tiles_stitched" / "g2" / "mask.tiff").exists()
    assert _job_objects(stack) == [] and _results_queues() == []


def test_ecs_workers_that_left_idle_between_groups_are_started_again(
        agent, aws_settings, small_dataset, tmp_path, monkeypatch) -> None:
    """Normalising a big second group outlasts idle_exit_s: every task leaves idle, and the job starts them again."""
    monkeypatch.setattr("am.job.HEALTH_CHECK_EVERY_S", 0.5)
    original = GroupTiler.normalise

    def slow_second_group(self: GroupTiler) -> Any:
        if self.group == "g2":
            deadline = time.monotonic() + 60
            while len(agent.exit_codes) < 2 and time.monotonic() < deadline:  # until both workers have left
                time.sleep(0.2)
            assert agent.exit_codes and set(agent.exit_codes.values()) == {0}, agent.errors
        return original(self)

    monkeypatch.setattr(GroupTiler, "normalise", slow_second_group)
    summary = run_pipeline(small_dataset, settings=aws_settings.replace(idle_exit_s=2, workers=2),
                           groups=["g1", "g2"], register=False, cache_dir=tmp_path / "cache", show_progress=False)
    agent.join()
    assert summary.job is not None and summary.job.completed == summary.tiles > 0
    assert len(agent.run_calls) >= 2 and {call["count"] for call in agent.run_calls} == {2}
