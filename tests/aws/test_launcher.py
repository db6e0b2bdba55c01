"""EcsLauncher and resolve_aws_resources against moto's ECS, SQS and CloudFormation."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from botocore.exceptions import ClientError

import am.launchers.aws_stack
from am.errors import ConfigError, LauncherError
from am.launchers.aws import (
    MAX_TASKS_PER_DESCRIBE,
    MAX_TASKS_PER_RUN_TASK,
    SELF_EXIT_STOP_CODE,
    STOP_POLL_S,
    STOP_REASON,
    EcsLauncher,
    task_environment,
)
from am.launchers.aws_stack import AwsResources, resolve_aws_resources
from am.settings import Settings
from tests.aws.conftest import STACK, TASKS_PER_INSTANCE, RecordingEcs, add_gpu_hosts, register_small_task_definition

ENV = {"AM_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/am-segm-tiles",
       "AM_MODEL": "s3://models/models/am-segm.pt", "AM_IDLE_EXIT_S": "60"}


def _launcher(ecs, resources: AwsResources, **kwargs) -> EcsLauncher:
    kwargs.setdefault("sleep", lambda _s: None)
    return EcsLauncher(ecs, resources, **kwargs)


def _statuses(aws, resources: AwsResources, arns) -> list[dict]:
    return aws.ecs().describe_tasks(cluster=resources.cluster, tasks=list(arns))["tasks"]


def test_run_task_in_chunks_of_ten_with_settings_only_then_stop(aws, cluster_resources) -> None:
    add_gpu_hosts(cluster_resources.cluster, 4)  # six hosts: room for 24
    ecs = RecordingEcs(aws.ecs())
    launcher = _launcher(ecs, cluster_resources, max_tasks=30)
    launcher.start(23, {**ENV, "PATH": "/usr/bin"})

    calls = ecs.named("run_task")
    assert [c["count"] for c in calls] == [10, 10, 3]
    assert max(c["count"] for c in calls) <= MAX_TASKS_PER_RUN_TASK
    for call in calls:
        assert call["launchType"] == "EC2" and "capacityProviderStrategy" not in call
        assert call["cluster"] == cluster_resources.cluster
        assert call["taskDefinition"] == cluster_resources.task_definition
        assert call["startedBy"] == "am-segm"
        [override] = call["overrides"]["containerOverrides"]
        assert override["name"] == "worker"
        assert {e["name"]: e["value"] for e in override["environment"]} == ENV
    assert len(launcher.task_arns) == 23
    assert launcher.alive() == 23

    launcher.stop()
    tasks = _statuses(aws, cluster_resources, launcher.task_arns)
    assert {t["lastStatus"] for t in tasks} == {"STOPPED"}
    assert {t["stoppedReason"] for t in tasks} == {STOP_REASON}
    assert launcher.alive() == 0
    stops = len(ecs.named("stop_task"))
    launcher.stop()
    assert len(ecs.named("stop_task")) == stops == 23


def test_max_tasks_caps_what_one_job_starts(aws, cluster_resources) -> None:
    launcher = _launcher(aws.ecs(), cluster_resources, max_tasks=3)
    launcher.start(5, ENV)
    launcher.start(2, ENV)
    assert len(launcher.task_arns) == 3


def test_tasks_seen_stopped_leave_room_for_new_ones(aws, cluster_resources) -> None:
    """aws_max_tasks caps the job's tasks running at once, so workers that left idle can be replaced."""
    launcher = _launcher(aws.ecs(), cluster_resources, max_tasks=2)
    launcher.start(2, ENV)
    launcher.start(1, ENV)
    assert len(launcher.task_arns) == 2
    for arn in launcher.task_arns:
        aws.ecs().stop_task(cluster=cluster_resources.cluster, task=arn, reason="Essential container in task exited")
    assert launcher.alive() == 0
    launcher.start(2, ENV)
    assert len(launcher.task_arns) == 4 and launcher.alive() == 2


def test_exit_codes_tell_an_idle_exit_from_a_crash_and_from_a_stop(aws, cluster_resources) -> None:
    """Only a task whose worker exited by itself has a code; a worker stopped by anyone exits 0 on SIGTERM too."""
    ecs = RecordingEcs(aws.ecs())
    launcher = _launcher(ecs, cluster_resources, max_tasks=4)
    launcher.start(4, ENV)
    assert launcher.exit_codes() == [None] * 4
    stopped = _statuses(aws, cluster_resources, launcher.task_arns)
    how = [(SELF_EXIT_STOP_CODE, 0), (SELF_EXIT_STOP_CODE, 137), ("UserInitiated", 0), (SELF_EXIT_STOP_CODE, None)]
    for task, (stop_code, exit_code) in zip(stopped, how, strict=True):
        task.update(lastStatus="STOPPED", desiredStatus="STOPPED", stopCode=stop_code)
        for container in task["containers"]:
            container.pop("exitCode", None)
            if exit_code is not None:
                container["exitCode"] = exit_code
    order = {arn: n for n, arn in enumerate(launcher.task_arns)}
    ecs.injected["describe_tasks"] = [{"tasks": sorted(stopped, key=lambda t: order[t["taskArn"]]), "failures": []}]
    assert launcher.alive() == 0
    assert launcher.exit_codes() == [0, 137, None, None]


def test_alive_describes_at_most_100_tasks_per_call(aws, cluster_resources) -> None:
    count = MAX_TASKS_PER_DESCRIBE + 5
    add_gpu_hosts(cluster_resources.cluster, -(-count // TASKS_PER_INSTANCE) - 2)
    ecs = RecordingEcs(aws.ecs())
    launcher = _launcher(ecs, cluster_resources, max_tasks=count)
    launcher.start(count, ENV)
    assert launcher.alive() == count
    assert [len(c["tasks"]) for c in ecs.named("describe_tasks")] == [MAX_TASKS_PER_DESCRIBE, 5]


@pytest.mark.parametrize("name, value", [
    ("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("AWS_SESSION_TOKEN", "x"),
    ("AM_API_TOKEN", "x"), ("AM_MODEL", "s3://AKIAABCDEFGHIJKLMNOP/x.pt"),
])
def test_credentials_are_refused_before_any_task_starts(aws, cluster_resources, name, value) -> None:
    ecs = RecordingEcs(aws.ecs())
    with pytest.raises(LauncherError, match=name):
        _launcher(ecs, cluster_resources).start(1, {**ENV, name: value})
    assert ecs.named("run_task") == []


def test_refusal_names_the_variable_not_its_value() -> None:
    with pytest.raises(LauncherError) as info:
        task_environment({"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"})
    assert "wJalr" not in str(info.value)


def test_failures_are_retried_then_reported_with_their_reasons(aws, cluster_resources) -> None:
    ecs = RecordingEcs(aws.ecs())
    failure = {"tasks": [], "failures": [{"arn": "arn:aws:ecs:us-east-1:123456789012:container-instance/x",
                                          "reason": "RESOURCE:GPU"}]}
    ecs.injected["run_task"] = [failure, failure, failure]
    slept: list[float] = []
    launcher = _launcher(ecs, cluster_resources, attempts=3, retry_delay_s=7.0, sleep=slept.append)
    with pytest.raises(LauncherError, match="RESOURCE:GPU"):
        launcher.start(2, ENV)
    assert len(ecs.named("run_task")) == 3
    assert slept == [7.0, 7.0]


def test_a_failure_then_success_starts_everything(aws, cluster_resources) -> None:
    ecs = RecordingEcs(aws.ecs())
    ecs.injected["run_task"] = [{"tasks": [], "failures": [{"reason": "AGENT"}]}]
    launcher = _launcher(ecs, cluster_resources)
    launcher.start(3, ENV)
    assert [c["count"] for c in ecs.named("run_task")] == [3, 3]
    assert launcher.alive() == 3


def test_too_little_capacity_starts_what_fits_and_warns(aws, cluster_resources, caplog) -> None:
    # Two hosts hold eight tasks; moto places what fits without a failure entry, as ECS may.
    launcher = _launcher(aws.ecs(), cluster_resources, max_tasks=20)
    with caplog.at_level(logging.WARNING, logger="am.launchers.aws"):
        launcher.start(10, ENV)
    assert len(launcher.task_arns) == 2 * TASKS_PER_INSTANCE
    assert "only 8 of 10" in caplog.text


def test_run_task_error_is_a_launcher_error(aws, cluster_resources) -> None:
    missing = dataclasses.replace(cluster_resources, task_definition="no-such-family:1")
    with pytest.raises(LauncherError, match="no-such-family"):
        _launcher(aws.ecs(), missing).start(1, ENV)


def test_capacity_provider_strategy_replaces_the_launch_type(aws, cluster_resources) -> None:
    ecs = RecordingEcs(aws.ecs())
    aws.ecs().create_capacity_provider(name="gpu", autoScalingGroupProvider={
        "autoScalingGroupArn": "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:x:autoScalingGroupName/gpu",
        "managedScaling": {"status": "ENABLED"}})
    with_provider = dataclasses.replace(cluster_resources, capacity_provider="gpu")
    _launcher(ecs, with_provider).start(2, ENV)
    [call] = ecs.named("run_task")
    assert call["capacityProviderStrategy"] == [{"capacityProvider": "gpu", "weight": 1, "base": 0}]
    assert "launchType" not in call


def test_awsvpc_network_configuration_when_subnets_are_set(aws, cluster_resources) -> None:
    ecs = RecordingEcs(aws.ecs())
    awsvpc = dataclasses.replace(cluster_resources, subnets=("subnet-1", "subnet-2"), security_groups=("sg-1",))
    _launcher(ecs, awsvpc).start(1, ENV)
    [call] = ecs.named("run_task")
    assert call["networkConfiguration"] == {"awsvpcConfiguration": {
        "subnets": ["subnet-1", "subnet-2"], "securityGroups": ["sg-1"]}}


def test_stop_tries_every_task_and_names_those_it_could_not_stop(aws, cluster_resources) -> None:
    ecs = RecordingEcs(aws.ecs())
    launcher = _launcher(ecs, cluster_resources)
    launcher.start(3, ENV)
    ecs.injected["stop_task"] = [ClientError({"Error": {"Code": "ServerException", "Message": "try later"}},
                                             "StopTask")]
    with pytest.raises(LauncherError, match="ServerException") as info:
        launcher.stop()
    first = launcher.task_arns[0].rsplit("/", 1)[-1]
    assert first in str(info.value)
    assert len(ecs.named("stop_task")) == 3
    launcher.stop()
    assert len(ecs.named("stop_task")) == 4
    assert {t["lastStatus"] for t in _statuses(aws, cluster_resources, launcher.task_arns)} == {"STOPPED"}


def _still_stopping(arns) -> dict:
    """DescribeTasks while the workers finish their batch after StopTask: desired STOPPED, still running."""
    return {"tasks": [{"taskArn": arn, "lastStatus": "RUNNING", "desiredStatus": "STOPPED",
                       "containers": [{"name": "worker", "lastStatus": "RUNNING"}]} for arn in arns]}


def test_stop_waits_until_the_stopped_tasks_have_ended(aws, cluster_resources) -> None:
    """StopTask returns at once; the job must not delete its queue and objects while workers still write."""
    ecs = RecordingEcs(aws.ecs())
    slept: list[float] = []
    launcher = _launcher(ecs, cluster_resources, sleep=slept.append)
    launcher.start(3, ENV)
    ecs.injected["describe_tasks"] = [_still_stopping(launcher.task_arns)] * 2
    launcher.stop()
    assert slept == [STOP_POLL_S, STOP_POLL_S]
    # Two answers "still running", then moto's own: every task STOPPED.
    assert len(ecs.named("describe_tasks")) == 3


def test_stop_waits_at_most_its_limit_and_names_the_tasks_still_stopping(aws, cluster_resources, caplog) -> None:
    ecs = RecordingEcs(aws.ecs())
    slept: list[float] = []
    launcher = _launcher(ecs, cluster_resources, sleep=slept.append, stop_wait_s=12)
    launcher.start(2, ENV)
    ecs.injected["describe_tasks"] = [_still_stopping(launcher.task_arns)] * 10
    with caplog.at_level(logging.WARNING):
        launcher.stop()
    assert slept == [STOP_POLL_S, STOP_POLL_S, 2.0]
    assert "2 worker task(s) still stopping after 12 s" in caplog.text
    assert launcher.task_arns[0].rsplit("/", 1)[-1] in caplog.text


def test_stop_goes_on_when_it_cannot_tell_whether_tasks_ended(aws, cluster_resources, caplog) -> None:
    ecs = RecordingEcs(aws.ecs())
    slept: list[float] = []
    launcher = _launcher(ecs, cluster_resources, sleep=slept.append)
    launcher.start(1, ENV)
    ecs.injected["describe_tasks"] = [ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}},
                                                  "DescribeTasks")]
    with caplog.at_level(logging.WARNING):
        launcher.stop()
    assert slept == [] and "ThrottlingException" in caplog.text


# ------------------------------------------------------------------------------ service mode


@pytest.fixture
def service_resources(aws, cluster_resources) -> AwsResources:
    aws.ecs().create_service(cluster=cluster_resources.cluster, serviceName="workers",
                             taskDefinition=cluster_resources.task_definition, desiredCount=1)
    return dataclasses.replace(cluster_resources, service="workers")


def _desired(aws, resources: AwsResources) -> int:
    return aws.ecs().describe_services(cluster=resources.cluster, services=[resources.service])[
        "services"][0]["desiredCount"]


def test_service_mode_raises_the_desired_count_and_restores_it(aws, service_resources) -> None:
    launcher = _launcher(aws.ecs(), service_resources, mode="service")
    launcher.start(4, {**ENV, "AM_QUEUE_URL": service_resources.queue_url})
    assert _desired(aws, service_resources) == 4
    assert launcher.alive() == 4
    launcher.stop()
    assert _desired(aws, service_resources) == 1
    launcher.stop()
    assert _desired(aws, service_resources) == 1


def test_service_mode_never_lowers_a_busier_service(aws, service_resources) -> None:
    aws.ecs().update_service(cluster=service_resources.cluster, service="workers", desiredCount=6)
    launcher = _launcher(aws.ecs(), service_resources, mode="service")
    launcher.start(4, {**ENV, "AM_QUEUE_URL": service_resources.queue_url})
    launcher.stop()
    assert _desired(aws, service_resources) == 6


def test_service_mode_leaves_a_count_someone_else_changed(aws, service_resources) -> None:
    launcher = _launcher(aws.ecs(), service_resources, mode="service")
    launcher.start(3, {**ENV, "AM_QUEUE_URL": service_resources.queue_url})
    aws.ecs().update_service(cluster=service_resources.cluster, service="workers", desiredCount=5)
    launcher.stop()
    assert _desired(aws, service_resources) == 5


def test_service_mode_refuses_a_service_that_reads_another_queue(aws, service_resources) -> None:
    launcher = _launcher(aws.ecs(), service_resources, mode="service")
    other = "https://sqs.us-east-1.amazonaws.com/123456789012/other"
    with pytest.raises(LauncherError, match=f"use AM_QUEUE_URL {service_resources.queue_url} \\(this job: {other}\\)"):
        launcher.start(2, {**ENV, "AM_QUEUE_URL": other})
    assert _desired(aws, service_resources) == 1


def test_service_mode_refuses_a_service_that_uses_other_buckets(aws, service_resources) -> None:
    # Messages carry keys only: workers of other buckets would find no tile and write masks elsewhere.
    launcher = _launcher(aws.ecs(), service_resources, mode="service")
    environment = {**ENV, "AM_QUEUE_URL": service_resources.queue_url, "AM_INPUT_BUCKET": "my-input",
                   "AM_OUTPUT_BUCKET": "am-segm-output"}
    with pytest.raises(LauncherError) as raised:
        launcher.start(2, environment)
    assert "use AM_INPUT_BUCKET am-segm-input (this job: my-input);" in str(raised.value)
    assert "AM_OUTPUT_BUCKET" not in str(raised.value), "the bucket that agrees is not named"
    assert _desired(aws, service_resources) == 1
    launcher.start(2, {**environment, "AM_INPUT_BUCKET": "am-segm-input"})
    assert _desired(aws, service_resources) == 2
    launcher.stop()


class _ServiceFromZero:
    """ECS's answers for a service on a cluster with no GPU instance yet: its tasks are PROVISIONING,
    which neither ``runningCount`` nor ``pendingCount`` counts (moto does not model it)."""

    def __init__(self, *, desired: int, running: int = 0, pending: int = 0) -> None:
        self.service = {"serviceName": "workers", "status": "ACTIVE", "desiredCount": desired,
                        "runningCount": running, "pendingCount": pending, "taskDefinition": "am-segm-worker:1"}

    def describe_services(self, cluster: str, services: list[str]) -> dict:
        return {"services": [self.service]}


@pytest.mark.parametrize("desired, running, pending, alive", [
    (2, 0, 0, 2),      # raised from zero: both tasks wait for an instance to boot
    (3, 1, 0, 3),      # one up, two on their way
    (2, 2, 1, 3),      # a replacement starting beside the two running
    (0, 1, 0, 1),      # scaled to zero, the last task not yet gone
    (0, 0, 0, 0),      # drained: the job has no worker left
])
def test_service_mode_counts_the_tasks_it_wants_as_on_their_way(cluster_resources, desired, running, pending,
                                                                  alive) -> None:
    resources = dataclasses.replace(cluster_resources, service="workers")
    ecs = _ServiceFromZero(desired=desired, running=running, pending=pending)
    assert _launcher(ecs, resources, mode="service").alive() == alive


def test_service_mode_needs_a_service(cluster_resources) -> None:
    with pytest.raises(ConfigError, match="ecs_service"):
        EcsLauncher(object(), cluster_resources, mode="service")


# ------------------------------------------------------------------------------- resolving


def test_resources_from_settings_alone(aws, cluster_resources) -> None:
    settings = Settings(backend="aws", ecs_cluster="am-segm", ecs_task_definition="am-segm-worker",
                        ecs_subnets="subnet-1, subnet-2", ecs_security_groups="sg-1")
    resources = resolve_aws_resources(settings, cloudformation_client=aws.cloudformation(), sqs_client=aws.sqs())
    assert resources.queue_url == cluster_resources.queue_url
    assert resources.dead_letter_queue_url == cluster_resources.dead_letter_queue_url
    assert (resources.input_bucket, resources.output_bucket) == ("am-segm-input", "am-segm-output")
    assert resources.subnets == ("subnet-1", "subnet-2") and resources.security_groups == ("sg-1",)
    assert resources.service == "" and resources.model_uri == ""


@pytest.mark.parametrize("missing, setting", [("ecs_cluster", "ecs_cluster"),
                                              ("ecs_task_definition", "ecs_task_definition")])
def test_a_missing_piece_names_its_setting(aws, cluster_resources, missing, setting) -> None:
    values = {"ecs_cluster": "am-segm", "ecs_task_definition": "am-segm-worker"}
    values.pop(missing)
    with pytest.raises(ConfigError, match=f"{setting}.*AM_{setting.upper()}"):
        resolve_aws_resources(Settings(backend="aws", **values), cloudformation_client=aws.cloudformation(),
                              sqs_client=aws.sqs())


def test_a_missing_queue_names_its_setting(aws) -> None:
    settings = Settings(backend="aws", ecs_cluster="c", ecs_task_definition="t")
    with pytest.raises(ConfigError, match="queue_name"):
        resolve_aws_resources(settings, cloudformation_client=aws.cloudformation(), sqs_client=aws.sqs())


def test_service_launch_needs_a_service(aws, cluster_resources) -> None:
    settings = Settings(backend="aws", ecs_cluster="am-segm", ecs_task_definition="t", aws_launch="service")
    with pytest.raises(ConfigError, match="ecs_service"):
        resolve_aws_resources(settings, cloudformation_client=aws.cloudformation(), sqs_client=aws.sqs())


def test_unknown_stack_says_how_to_deploy(aws) -> None:
    settings = Settings(backend="aws", stack_name="no-such-stack")
    with pytest.raises(ConfigError, match="no-such-stack.*make deploy") as refused:
        resolve_aws_resources(settings, cloudformation_client=aws.cloudformation(), sqs_client=aws.sqs())
    # A stack deployed in another region looks missing: the message says where it was looked for.
    region = aws.cloudformation().meta.region_name
    assert f"'no-such-stack' in region {region}:" in str(refused.value) and "AM_REGION" in str(refused.value)


def test_explicit_settings_override_stack_outputs(aws, stack) -> None:
    aws.sqs().create_queue(QueueName="other-tiles")
    settings = Settings(backend="aws", stack_name=STACK, input_bucket="my-input", queue_name="other-tiles",
                        ecs_task_definition="am-segm-worker:7")
    resources = resolve_aws_resources(settings, cloudformation_client=aws.cloudformation(), sqs_client=aws.sqs())
    assert resources.input_bucket == "my-input"
    assert resources.output_bucket == stack["OutputBucket"]
    assert resources.queue_url.endswith("/other-tiles")
    assert resources.task_definition == "am-segm-worker:7"
    assert resources.cluster == stack["Cluster"]


def test_an_explicit_bucket_that_is_the_stacks_other_bucket_is_refused(aws, stack) -> None:
    # Settings alone cannot tell: input_bucket differs from the default output_bucket the stack replaces.
    settings = Settings(backend="aws", stack_name=STACK, input_bucket=stack["OutputBucket"])
    with pytest.raises(ConfigError, match=f"input_bucket and output_bucket are both '{stack['OutputBucket']}' "
                                          f"\\(from stack '{STACK}'\\)"):
        resolve_aws_resources(settings, cloudformation_client=aws.cloudformation(), sqs_client=aws.sqs())


def test_a_dead_letter_queue_that_is_the_tile_queue_is_refused(aws, stack, monkeypatch) -> None:
    # A hand-made stack whose outputs name one queue twice (the settings refuse two equal names).
    outputs = {**stack, "DeadLetterQueueUrl": stack["QueueUrl"]}
    monkeypatch.setattr(am.launchers.aws_stack, "read_stack_outputs", lambda client, name: outputs)
    settings = Settings(backend="aws", stack_name=STACK)
    with pytest.raises(ConfigError, match="the tile queue and its dead-letter queue are both"):
        resolve_aws_resources(settings, cloudformation_client=aws.cloudformation(), sqs_client=aws.sqs())


def test_results_prefix_must_match_what_the_task_role_allows(aws, stack) -> None:
    settings = Settings(backend="aws", stack_name=STACK, results_queue_prefix="mine")
    with pytest.raises(ConfigError, match="am-segm-results"):
        resolve_aws_resources(settings, cloudformation_client=aws.cloudformation(), sqs_client=aws.sqs())


def test_task_definition_helper_registers_with_queue(aws) -> None:
    arn = register_small_task_definition(family="x", queue_url="q")
    assert arn.endswith("x:1")
