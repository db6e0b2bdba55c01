"""What EcsLauncher waits for and tells when ECS goes wrong, against moto's ECS with ECS's own answers injected.

moto runs no container: it cannot keep a task in PROVISIONING, fail one at start, or count a service's
running tasks. Those answers are written here the way ECS gives them (the DescribeTasks and
DescribeServices fields of the ECS API reference) and replace moto's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

import am.job
import am.scale.__main__ as scale_main
from am.backends import Backend
from am.collector import ResultCollector
from am.dataset import DatasetLayout
from am.errors import JobTimeout, LauncherError, ScaleError
from am.job import TIMEOUT_ADVICE, _wait_for_tiles
from am.launchers.aws import STOP_POLL_S, EcsLauncher
from am.launchers.aws_stack import AwsResources
from am.messages import tile_name
from am.scale.control import start_tasks
from am.tracking import JobTracker
from am.transport.queue import Queue, create_results_queue
from am.transport.storage import Storage
from tests.aws.conftest import STACK, RecordingEcs, add_gpu_hosts, client, register_small_task_definition
from tests.aws.test_launcher import ENV, _launcher

JOB = "20261207-230000-0cc0dd"
PULL_FAILED = ("CannotPullContainerError: pull image manifest has been retried 7 time(s): failed to resolve ref "
               "123456789012.dkr.ecr.us-east-1.amazonaws.com/am-segm-worker:latest: not found")


class RewritingEcs(RecordingEcs):
    """moto's ECS, with every DescribeTasks answer passed through ``rewrite`` (task by task) first."""

    def __init__(self, client: Any, rewrite: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(client)
        self._rewrite = rewrite

    def __getattr__(self, name: str) -> Any:
        target = super().__getattr__(name)
        if name != "describe_tasks":
            return target

        def call(**kwargs: Any) -> Any:
            response = target(**kwargs)
            for task in response.get("tasks", []):
                self._rewrite(task)
            return response

        return call


def _failed_to_start(task: dict[str, Any]) -> None:
    """A task whose image could not be pulled: ECS stops it before its container ever runs (no exit code)."""
    task.update(lastStatus="STOPPED", desiredStatus="STOPPED", stopCode="TaskFailedToStart", stoppedReason=PULL_FAILED)
    for container in task.get("containers", []):
        container["lastStatus"] = "STOPPED"
        container.pop("exitCode", None)


def _provisioning(task: dict[str, Any]) -> None:
    """A task waiting for a GPU instance that never joins the cluster."""
    if task.get("desiredStatus") != "STOPPED":
        task["lastStatus"] = "PROVISIONING"
        task.pop("containerInstanceArn", None)
        for container in task.get("containers", []):
            container["lastStatus"] = "PENDING"


def _crashed(task: dict[str, Any], code: int = 1) -> None:
    """A task whose worker ran and exited with ``code`` by itself."""
    task.update(lastStatus="STOPPED", desiredStatus="STOPPED", stopCode="EssentialContainerExited",
                stoppedReason="Essential container in task exited")
    for container in task.get("containers", []):
        container.update(lastStatus="STOPPED", exitCode=code)


def _pending_tiles(aws, resources: AwsResources, launcher: EcsLauncher, tmp_path, tiles: int = 3):
    """What _wait_for_tiles needs for ``tiles`` tiles that no worker takes: backend, collector, queues."""
    sqs = aws.sqs()
    backend = Backend("aws", aws, launcher, resources.queue_url, resources.dead_letter_queue_url,
                      resources.input_bucket, resources.output_bucket, "s3://models/m.pt")
    tracker = JobTracker([tile_name("g", n) for n in range(tiles)], max_attempts=3)
    collector = ResultCollector(job_id=JOB, tracker=tracker, storage=Storage(aws.s3()), bucket=resources.output_bucket,
                                layout=DatasetLayout(tmp_path), tile_size=128, on_done=lambda n: None)
    results = Queue(sqs, create_results_queue(sqs, prefix="am-segm-results", job=JOB))
    return backend, collector, results, Queue(sqs, resources.dead_letter_queue_url)


@pytest.fixture
def service_resources(aws, cluster_resources) -> AwsResources:
    """The cluster with a service ``workers`` wanting one task (as in test_launcher.py)."""
    aws.ecs().create_service(cluster=cluster_resources.cluster, serviceName="workers",
                             taskDefinition=cluster_resources.task_definition, desiredCount=1)
    return dataclasses.replace(cluster_resources, service="workers")


@pytest.fixture
def quick_checks(monkeypatch) -> None:
    monkeypatch.setattr(am.job, "HEALTH_CHECK_EVERY_S", 0.2)
    monkeypatch.setattr(am.job, "RESULT_WAIT_S", 0)


# ------------------------------------------------------------------ A: service mode waits on stop


def _service_answer(aws, resources: AwsResources, *, desired: int, running: int, pending: int = 0) -> dict:
    """DescribeServices as ECS gives it while tasks run (moto counts none of them)."""
    answer = aws.ecs().describe_services(cluster=resources.cluster, services=[resources.service])
    answer["services"][0].update(desiredCount=desired, runningCount=running, pendingCount=pending)
    return answer


def test_service_stop_waits_for_the_tasks_it_no_longer_wants(aws, service_resources, caplog) -> None:
    """Lowering the count returns at once; the job must not delete its queue and objects while they still write."""
    ecs = RecordingEcs(aws.ecs())
    slept: list[float] = []
    launcher = _launcher(ecs, service_resources, mode="service", sleep=slept.append)
    launcher.start(4, {**ENV, "AM_QUEUE_URL": service_resources.queue_url})
    ecs.injected["describe_services"] = [
        _service_answer(aws, service_resources, desired=4, running=4),  # the count this job set: lower it
        _service_answer(aws, service_resources, desired=1, running=4),  # ECS has not stopped any yet
        _service_answer(aws, service_resources, desired=1, running=3, pending=1),
        _service_answer(aws, service_resources, desired=1, running=1),
    ]
    with caplog.at_level(logging.INFO, logger="am.launchers.aws"):
        launcher.stop()
    assert aws.ecs().describe_services(cluster=service_resources.cluster,
                                       services=["workers"])["services"][0]["desiredCount"] == 1
    assert slept == [STOP_POLL_S, STOP_POLL_S]
    assert "waiting up to 150 s for service workers to stop 3 of its 4 task(s) (back to 1)" in caplog.text


def test_service_stop_waits_at_most_its_limit(aws, service_resources, caplog) -> None:
    ecs = RecordingEcs(aws.ecs())
    slept: list[float] = []
    launcher = _launcher(ecs, service_resources, mode="service", sleep=slept.append, stop_wait_s=12)
    launcher.start(3, {**ENV, "AM_QUEUE_URL": service_resources.queue_url})
    ecs.injected["describe_services"] = [_service_answer(aws, service_resources, desired=3, running=3)] + [
        _service_answer(aws, service_resources, desired=1, running=3)] * 10
    with caplog.at_level(logging.WARNING, logger="am.launchers.aws"):
        launcher.stop()
    assert slept == [STOP_POLL_S, STOP_POLL_S, 2.0]
    assert "service workers still runs 3 task(s) after 12 s (back to 1)" in caplog.text


def test_service_stop_does_not_wait_where_it_did_not_lower_the_count(aws, service_resources) -> None:
    """Someone else set the count since (or the service already wanted enough): what runs is not this job's doing."""
    ecs = RecordingEcs(aws.ecs())
    slept: list[float] = []
    changed = _launcher(ecs, service_resources, mode="service", sleep=slept.append)
    changed.start(3, {**ENV, "AM_QUEUE_URL": service_resources.queue_url})
    ecs.injected["describe_services"] = [_service_answer(aws, service_resources, desired=5, running=5)] * 3
    ecs.calls.clear()
    changed.stop()
    assert [call for call, _ in ecs.calls] == ["describe_services"] and slept == []

    ecs.injected.clear()
    aws.ecs().update_service(cluster=service_resources.cluster, service="workers", desiredCount=6)
    busier = _launcher(ecs, service_resources, mode="service", sleep=slept.append)
    busier.start(4, {**ENV, "AM_QUEUE_URL": service_resources.queue_url})
    ecs.calls.clear()
    busier.stop()
    assert ecs.calls == [] and slept == []


# ------------------------------------------------------------- B: tasks that fail to start say why


def test_tasks_that_failed_to_start_end_the_job_with_their_cause_and_what_to_fix(
        aws, cluster_resources, quick_checks, tmp_path) -> None:
    ecs = RewritingEcs(aws.ecs(), _failed_to_start)
    launcher = _launcher(ecs, cluster_resources, max_tasks=4, stop_wait_s=0)
    launcher.start(3, ENV)
    backend, collector, results, dead_letters = _pending_tiles(aws, cluster_resources, launcher, tmp_path)
    with pytest.raises(LauncherError) as failed:
        _wait_for_tiles(backend, collector, results=results, dead_letters=dead_letters,
                        deadline=time.monotonic() + 20)
    message = str(failed.value)
    first, *detail = message.splitlines()
    assert first.startswith("all workers stopped while 3 tile(s) were pending; 3 of the 3 stopped worker task(s) "
                            "failed to start on cluster am-segm (stopCode TaskFailedToStart, CannotPullContainerError")
    assert "fix that cause first" in first and "rerun the same command to resume" not in first.split("fix")[0]
    assert first.endswith("a rerun before that fails the same way; finished tiles are kept")
    assert detail == ["how the worker tasks ended (ECS):",
                      f"  3 task(s): stopCode TaskFailedToStart, {PULL_FAILED}",
                      "  worker logs: none; the 3 task(s) that failed to start wrote no log"]


def test_stop_causes_are_counted_and_the_log_group_is_named(aws, cluster_resources) -> None:
    """Tasks that ran and crashed point to their CloudWatch streams, read from the task definition."""
    task_definition = client("ecs").register_task_definition(
        family="logged", requiresCompatibilities=["EC2"], networkMode="bridge",
        containerDefinitions=[{
            "name": "worker", "image": "worker:latest", "cpu": 1024, "memory": 1024, "essential": True,
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": "/ecs/am-segm-test-worker", "awslogs-region": "us-east-1",
                "awslogs-stream-prefix": "worker"}},
        }])["taskDefinition"]["taskDefinitionArn"]
    resources = dataclasses.replace(cluster_resources, task_definition=task_definition)
    ecs = RecordingEcs(aws.ecs())
    launcher = _launcher(ecs, resources, max_tasks=4)
    launcher.start(3, ENV)
    answers = aws.ecs().describe_tasks(cluster=resources.cluster, tasks=list(launcher.task_arns))
    for task, end in zip(answers["tasks"], [_crashed, _crashed, _failed_to_start], strict=True):
        end(task)
    answers["tasks"][0]["containers"][0]["reason"] = "OutOfMemoryError: Container killed due to memory usage"
    ecs.injected["describe_tasks"] = [answers]
    assert launcher.alive() == 0
    lines = launcher.log_tail().splitlines()
    crashed = [_id(arn) for arn in launcher.task_arns if arn != answers["tasks"][2]["taskArn"]]
    assert sorted(lines[:3]) == sorted([
        "  1 task(s): stopCode EssentialContainerExited, Essential container in task exited, "
        "container worker: OutOfMemoryError: Container killed due to memory usage, exit code 1",
        "  1 task(s): stopCode EssentialContainerExited, Essential container in task exited, exit code 1",
        f"  1 task(s): stopCode TaskFailedToStart, {PULL_FAILED}",
    ])
    assert lines[3].startswith("  worker logs: CloudWatch Logs group /ecs/am-segm-test-worker, streams "
                               "worker/worker/<task id> (tasks ")
    assert lines[3].endswith("); the 1 task(s) that failed to start wrote no log")
    assert all(task in lines[3] for task in crashed)
    assert "1 of the 3 stopped worker task(s) failed to start" in launcher.rerun_advice()


def test_tasks_that_ran_and_stopped_keep_the_plain_advice(aws, cluster_resources) -> None:
    ecs = RewritingEcs(aws.ecs(), _crashed)
    launcher = _launcher(ecs, cluster_resources, max_tasks=2)
    launcher.start(2, ENV)
    assert launcher.alive() == 0
    assert launcher.rerun_advice() is None
    assert launcher.log_tail().splitlines()[0] == (
        "  2 task(s): stopCode EssentialContainerExited, Essential container in task exited, exit code 1")


def _id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


# ------------------------------------------------- C: a timeout while no task ever left PROVISIONING


def test_a_timeout_with_every_task_still_provisioning_blames_the_capacity(
        aws, cluster_resources, quick_checks, tmp_path) -> None:
    launcher = _launcher(RewritingEcs(aws.ecs(), _provisioning), cluster_resources, max_tasks=4, stop_wait_s=0)
    launcher.start(2, ENV)
    backend, collector, results, dead_letters = _pending_tiles(aws, cluster_resources, launcher, tmp_path)
    with pytest.raises(JobTimeout) as timed_out:
        _wait_for_tiles(backend, collector, results=results, dead_letters=dead_letters,
                        deadline=time.monotonic() + 0.5, budget=" after its budget of 1 s")
    message = str(timed_out.value)
    assert TIMEOUT_ADVICE not in message
    assert message.endswith(
        "pending after its budget of 1 s; none of the 2 worker task(s) started running on cluster am-segm: no GPU "
        "instance joined the cluster or had room for them (check that the instances' subnets give them a public "
        "IPv4 address or route through a NAT gateway, the cluster's capacity provider or container instances, and "
        "the stack's MaxInstances); fix that, then rerun to resume")


def test_a_timeout_after_a_task_ran_keeps_the_budget_advice(aws, cluster_resources, quick_checks, tmp_path) -> None:
    ran = set()

    def first_runs(task: dict[str, Any]) -> None:  # one task ran once; then every task waits for capacity again
        if not ran:
            ran.add(task["taskArn"])
        elif task["taskArn"] not in ran:
            _provisioning(task)

    launcher = _launcher(RewritingEcs(aws.ecs(), first_runs), cluster_resources, max_tasks=4, stop_wait_s=0)
    launcher.start(2, ENV)
    backend, collector, results, dead_letters = _pending_tiles(aws, cluster_resources, launcher, tmp_path)
    with pytest.raises(JobTimeout, match=TIMEOUT_ADVICE):
        _wait_for_tiles(backend, collector, results=results, dead_letters=dead_letters,
                        deadline=time.monotonic() + 0.5)


def test_a_service_whose_tasks_never_ran_names_the_service(aws, service_resources) -> None:
    ecs = RecordingEcs(aws.ecs())
    launcher = _launcher(ecs, service_resources, mode="service", max_tasks=4)
    launcher.start(2, {**ENV, "AM_QUEUE_URL": service_resources.queue_url})
    ecs.injected["describe_services"] = [_service_answer(aws, service_resources, desired=2, running=0)]
    assert launcher.timeout_advice().startswith(
        "none of the 2 task(s) of service workers started running on cluster am-segm:")
    ecs.injected["describe_services"] = [_service_answer(aws, service_resources, desired=2, running=1)]
    assert launcher.timeout_advice() is None


# ---------------------------------------------------- D: a start that fails half-way names what runs


class _SecondRunTaskFails:
    """ECS whose second RunTask call is refused, after the first started its ten tasks."""

    def __init__(self, ecs: Any) -> None:
        self._ecs = ecs
        self.run_task_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ecs, name)

    def run_task(self, **kwargs: Any) -> Any:
        self.run_task_calls += 1
        if self.run_task_calls == 2:
            raise ClientError({"Error": {"Code": "InvalidParameterException",
                                         "Message": "No Container Instances were found in your capacity provider."}},
                              "RunTask")
        return self._ecs.run_task(**kwargs)


def test_start_tasks_names_the_tasks_started_before_a_run_task_failed(aws, cluster_resources) -> None:
    add_gpu_hosts(cluster_resources.cluster, 2)  # room for 16
    with pytest.raises(ScaleError) as failed:
        start_tasks(_SecondRunTaskFails(aws.ecs()), cluster_resources, 12, idle_exit_s=120)
    running = aws.ecs().list_tasks(cluster=cluster_resources.cluster)["taskArns"]
    assert len(running) == 10
    message = str(failed.value)
    assert message.startswith("started 10 of 12 task(s) (")
    assert all(_id(arn) in message for arn in running)
    assert ") before: ECS run_task on cluster am-segm with task definition " in message
    assert "InvalidParameterException: No Container Instances were found in your capacity provider. Those 10 run " \
           "until they have been idle for 120 s" in message


def test_start_tasks_that_started_none_keeps_the_launchers_error(aws, cluster_resources) -> None:
    ecs = RecordingEcs(aws.ecs())
    ecs.injected["run_task"] = [ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "RunTask")]
    with pytest.raises(LauncherError, match="AccessDeniedException"):
        start_tasks(ecs, cluster_resources, 2, idle_exit_s=120)


def test_scale_start_that_fails_half_way_exits_1_naming_the_tasks_started(stack, monkeypatch, capsys) -> None:
    add_gpu_hosts(stack["Cluster"], 3)
    monkeypatch.setenv("AM_ECS_TASK_DEFINITION", register_small_task_definition(family="small"))
    original = scale_main.Clients.__init__

    def failing_second_run_task(self, settings) -> None:
        original(self, settings)
        self.ecs = _SecondRunTaskFails(self.ecs)

    monkeypatch.setattr(scale_main.Clients, "__init__", failing_second_run_task)
    assert scale_main.main(["--stack", STACK, "--region", "us-east-1", "start", "14"]) == 1
    tasks = client("ecs").list_tasks(cluster=stack["Cluster"])["taskArns"]
    assert len(tasks) == 10
    said = capsys.readouterr().err
    assert "started 10 of 14 task(s) (" in said and all(_id(arn) in said for arn in tasks)
