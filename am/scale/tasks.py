"""ECS look-ups shared by the operators' commands: the cluster's tasks and the service's scaling target.

Tasks the service keeps carry ``startedBy = ecs-svc/...``; one-off workers carry the
``startedBy`` of whoever ran them (``am-segm`` for the orchestrator, ``am-segm-scale`` for
``python -m am.scale start``). Application Auto Scaling names a service's target
``service/CLUSTER/SERVICE`` with the dimension ``ecs:service:DesiredCount``.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from am.errors import ScaleError
from am.launchers.aws import ALIVE_STATES, MAX_TASKS_PER_DESCRIBE
from am.launchers.aws_stack import AwsResources, aws_message

SERVICE_STARTED_BY_PREFIX = "ecs-svc/"
ONE_OFF_STARTED_BY_PREFIX = "am-segm"
SCALABLE_DIMENSION = "ecs:service:DesiredCount"
# States of a task that was told to stop and is still finishing (the worker's last batch).
STOPPING_STATES = frozenset({"DEACTIVATING", "STOPPING", "DEPROVISIONING"})
SERVICE_NAMESPACE = "ecs"


def short_name(name_or_arn: str) -> str:
    """``arn:aws:ecs:...:cluster/NAME`` and ``NAME`` both give ``NAME``."""
    return name_or_arn.rsplit("/", 1)[-1]


def service_resource_id(resources: AwsResources) -> str:
    """The name Application Auto Scaling knows the service by, whichever form the settings gave."""
    return f"service/{short_name(resources.cluster)}/{short_name(resources.service)}"


def cluster_tasks(ecs_client: Any, cluster: str, *, stopping: bool = False) -> list[dict[str, Any]]:
    """The cluster's live tasks, described; with ``stopping``, also those told to stop that have not yet exited."""
    desired_states = ("RUNNING", "STOPPED") if stopping else ("RUNNING",)
    try:
        arns: list[str] = []
        for desired in desired_states:
            for page in ecs_client.get_paginator("list_tasks").paginate(cluster=cluster, desiredStatus=desired):
                arns.extend(arn for arn in page.get("taskArns", []) if arn not in arns)
        tasks: list[dict[str, Any]] = []
        for start in range(0, len(arns), MAX_TASKS_PER_DESCRIBE):
            chunk = arns[start:start + MAX_TASKS_PER_DESCRIBE]
            tasks.extend(ecs_client.describe_tasks(cluster=cluster, tasks=chunk).get("tasks", []))
    except (ClientError, BotoCoreError) as exc:
        raise ScaleError(f"cannot list the tasks of ECS cluster {cluster}: {aws_message(exc)}") from exc
    keep = (ALIVE_STATES | STOPPING_STATES) if stopping else ALIVE_STATES
    return [t for t in tasks if t.get("lastStatus") in keep]


def is_one_off(task: dict[str, Any]) -> bool:
    """Whether am-segm started the task itself, so that it may stop it without touching the service."""
    return str(task.get("startedBy", "")).startswith(ONE_OFF_STARTED_BY_PREFIX)


def is_service_task(task: dict[str, Any]) -> bool:
    """Whether the service keeps the task: stopping it alone would only make the service start another."""
    return str(task.get("startedBy", "")).startswith(SERVICE_STARTED_BY_PREFIX) or \
        str(task.get("group", "")).startswith("service:")


def describe_service(ecs_client: Any, resources: AwsResources) -> dict[str, Any]:
    """The live service; a deleted (INACTIVE) one counts as missing, since ECS still describes it for a while."""
    if not resources.service:
        raise ScaleError("no ECS service is known: set ecs_service, or stack_name to a stack with a 'Service' output")
    try:
        response = ecs_client.describe_services(cluster=resources.cluster, services=[resources.service])
    except (ClientError, BotoCoreError) as exc:
        raise ScaleError(f"cannot describe ECS service {resources.service} on cluster {resources.cluster} "
                         f"(settings ecs_service, ecs_cluster, or the stack's Service and Cluster outputs): "
                         f"{aws_message(exc)}") from exc
    services = [s for s in response.get("services", []) if s.get("status") != "INACTIVE"]
    if not services:
        raise ScaleError(f"ECS service {resources.service} not found on cluster {resources.cluster}; check ecs_service")
    return services[0]


def service_target(autoscaling_client: Any, resources: AwsResources) -> dict[str, Any] | None:
    """The service's Application Auto Scaling target, or None when it has none."""
    try:
        response = autoscaling_client.describe_scalable_targets(
            ServiceNamespace=SERVICE_NAMESPACE, ResourceIds=[service_resource_id(resources)],
            ScalableDimension=SCALABLE_DIMENSION,
        )
    except (ClientError, BotoCoreError) as exc:
        raise ScaleError(f"cannot read the scaling limits of service {resources.service}: {aws_message(exc)}") from exc
    targets = response.get("ScalableTargets", [])
    return targets[0] if targets else None
