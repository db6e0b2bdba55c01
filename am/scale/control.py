"""Changing the workers: desired count, scaling limits, one-off tasks, draining and resuming.

Draining stops new work without cutting a batch short: ECS sends SIGTERM to each task, the
worker stops receiving, finishes what it holds and returns unstarted messages to the queue,
and ECS waits the task definition's ``stopTimeout`` before SIGKILL::

    report = drain(ecs, aas, resources, wait_s=600)
    resume(aas, resources)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from am.errors import LauncherError, ScaleError
from am.launchers.aws import EcsLauncher
from am.launchers.aws_stack import AwsResources, aws_message
from am.scale.tasks import (
    SCALABLE_DIMENSION,
    SERVICE_NAMESPACE,
    cluster_tasks,
    describe_service,
    is_one_off,
    is_service_task,
    service_resource_id,
    service_target,
    short_name,
)

log = logging.getLogger(__name__)

SCALE_STARTED_BY = "am-segm-scale"
DRAIN_REASON = "am-segm drain: finish the current batch and exit"
DRAIN_POLL_S = 10.0


@dataclass(frozen=True)
class DrainReport:
    service_desired_before: int | None
    scale_out_suspended: bool
    min_tasks: int | None
    stopped_tasks: tuple[str, ...]
    remaining: int


def set_desired_count(ecs_client: Any, resources: AwsResources, count: int) -> int:
    """Set the service's desired count; returns the previous one. Auto scaling may change it later."""
    if count < 0:
        raise ScaleError(f"desired count {count} is negative; use 0 or more")
    before = int(describe_service(ecs_client, resources).get("desiredCount", 0))
    try:
        ecs_client.update_service(cluster=resources.cluster, service=resources.service, desiredCount=count)
    except (ClientError, BotoCoreError) as exc:
        raise ScaleError(f"cannot set the desired count of service {resources.service}: {aws_message(exc)}") from exc
    log.info("service %s desired count %d -> %d", short_name(resources.service), before, count)
    return before


def set_limits(autoscaling_client: Any, resources: AwsResources, *, min_tasks: int | None = None,
               max_tasks: int | None = None) -> tuple[int, int]:
    """Change the auto scaling bounds of the service; an omitted bound keeps its value. Returns (min, max)."""
    target = service_target(autoscaling_client, resources)
    if target is None and (min_tasks is None or max_tasks is None):
        raise ScaleError(f"service {resources.service} has no auto scaling target yet; give both --min and --max")
    new_min = min_tasks if min_tasks is not None else int(target["MinCapacity"])  # type: ignore[index]
    new_max = max_tasks if max_tasks is not None else int(target["MaxCapacity"])  # type: ignore[index]
    if not 0 <= new_min <= new_max:
        raise ScaleError(f"scaling limits min {new_min}, max {new_max} are not valid: use 0 <= min <= max")
    _register(autoscaling_client, resources, MinCapacity=new_min, MaxCapacity=new_max)
    log.info("service %s scales between %d and %d tasks", short_name(resources.service), new_min, new_max)
    return new_min, new_max


def start_tasks(ecs_client: Any, resources: AwsResources, count: int, *, idle_exit_s: float,
                started_by: str = SCALE_STARTED_BY) -> tuple[str, ...]:
    """Start ``count`` one-off workers that leave after ``idle_exit_s`` without work; returns their ARNs.

    RunTask starts at most 10 tasks a call: where a later call fails, the tasks of the earlier ones
    run (and cost) until they leave idle, so the error names them (:func:`_partial_start`).
    """
    launcher = EcsLauncher(ecs_client, resources, mode="run_task", max_tasks=count, started_by=started_by)
    try:
        launcher.start(count, {"AM_IDLE_EXIT_S": str(idle_exit_s)})
    except LauncherError as exc:
        if not launcher.task_arns:
            raise
        raise _partial_start(launcher.task_arns, count, idle_exit_s=idle_exit_s, error=exc) from exc
    return launcher.task_arns


def _partial_start(arns: tuple[str, ...], count: int, *, idle_exit_s: float, error: LauncherError) -> ScaleError:
    """The error of a start that failed after starting some tasks: which ones run, and until when."""
    ids = ", ".join(short_name(arn) for arn in arns)
    cause = str(error).rstrip(".")
    return ScaleError(f"started {len(arns)} of {count} task(s) ({ids}) before: {cause}. Those {len(arns)} run "
                      f"until they have been idle for {idle_exit_s:.0f} s; stop them sooner with `python -m am.scale "
                      "drain` (which also sets the service to 0) or the ECS console, or start the rest once the "
                      "cause is fixed")


def drain(ecs_client: Any, autoscaling_client: Any | None, resources: AwsResources, *, wait_s: float = 0.0,
          poll_s: float = DRAIN_POLL_S, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> DrainReport:
    """Stop taking new work: suspend scale-out, set the service to 0, ask one-off workers to finish.

    With ``wait_s`` > 0, wait that long for the workers to exit; :class:`ScaleError` if some remain.
    """
    before = min_tasks = None
    suspended = False
    if resources.service:
        target = service_target(autoscaling_client, resources) if autoscaling_client is not None else None
        if target is not None:
            _register(autoscaling_client, resources, SuspendedState={
                "DynamicScalingInSuspended": False, "DynamicScalingOutSuspended": True,
                "ScheduledScalingSuspended": True,
            })
            suspended = True
            log.warning("service %s: scale-out suspended until `am.scale resume`", short_name(resources.service))
            min_tasks = int(target["MinCapacity"])
            if min_tasks > 0:
                log.warning("service %s keeps a minimum of %d tasks; lower it with `am.scale set --min 0`",
                            short_name(resources.service), min_tasks)
        before = set_desired_count(ecs_client, resources, 0)
    stopped = []
    for task in cluster_tasks(ecs_client, resources.cluster):
        if not is_one_off(task) or task.get("desiredStatus") == "STOPPED":
            continue
        try:
            ecs_client.stop_task(cluster=resources.cluster, task=task["taskArn"], reason=DRAIN_REASON)
        except (ClientError, BotoCoreError) as exc:
            raise ScaleError(f"cannot stop task {short_name(task['taskArn'])}: {aws_message(exc)}") from exc
        stopped.append(task["taskArn"])
        log.info("asked task %s to finish and exit", short_name(task["taskArn"]))
    remaining = _workers_left(ecs_client, resources)
    deadline = clock() + wait_s
    while remaining and clock() < deadline:
        log.info("%d worker task(s) still finishing", remaining)
        sleep(min(poll_s, max(0.0, deadline - clock())))
        remaining = _workers_left(ecs_client, resources)
    if wait_s > 0 and remaining:
        done = [f"the service's desired count is now 0 (was {before})"] if before is not None else []
        done += ["scale-out stays suspended (`am.scale resume` undoes it)"] if suspended else []
        done += [f"{len(stopped)} one-off task(s) were asked to finish"] if stopped else []
        raise ScaleError(f"{remaining} worker task(s) still running after {wait_s:.0f} s of draining; "
                         f"{'; '.join(done) or 'nothing was changed'}. Wait longer (drain --wait S) or look at "
                         "their logs")
    return DrainReport(before, suspended, min_tasks, tuple(stopped), remaining)


def resume(autoscaling_client: Any, resources: AwsResources) -> None:
    """Undo a drain: let auto scaling scale the service out again."""
    if not resources.service or service_target(autoscaling_client, resources) is None:
        raise ScaleError(f"service {resources.service or '(none)'} has no auto scaling target to resume; "
                         "set a desired count with `am.scale set --desired N` instead")
    _register(autoscaling_client, resources, SuspendedState={
        "DynamicScalingInSuspended": False, "DynamicScalingOutSuspended": False, "ScheduledScalingSuspended": False,
    })
    log.info("auto scaling of service %s resumed", short_name(resources.service))


def _workers_left(ecs_client: Any, resources: AwsResources) -> int:
    tasks = cluster_tasks(ecs_client, resources.cluster, stopping=True)
    return sum(1 for t in tasks if is_one_off(t) or is_service_task(t))


def _register(autoscaling_client: Any, resources: AwsResources, **changes: Any) -> None:
    try:
        autoscaling_client.register_scalable_target(
            ServiceNamespace=SERVICE_NAMESPACE, ResourceId=service_resource_id(resources),
            ScalableDimension=SCALABLE_DIMENSION, **changes,
        )
    except (ClientError, BotoCoreError) as exc:
        raise ScaleError(f"cannot change auto scaling of service {resources.service}: {aws_message(exc)}") from exc
