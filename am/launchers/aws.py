"""AWS launcher: workers as ECS tasks on GPU instances, found through the CloudFormation stack.

:func:`am.launchers.aws_stack.resolve_aws_resources` turns the stack's outputs (or explicit
settings) into an :class:`AwsResources`; :class:`EcsLauncher` implements the :class:`~am.launchers.Launcher`
protocol on top of it, either with one-off ``run_task`` calls or by nudging the stack's ECS
service::

    resources = resolve_aws_resources(settings, cloudformation_client=cfn, sqs_client=sqs)
    launcher = EcsLauncher(ecs, resources, mode="run_task", max_tasks=8)
    launcher.start(8, {"AM_QUEUE_URL": resources.queue_url, ...})
    ...
    launcher.stop()

Workers get their AWS rights from the task role. The launcher passes only ``AM_*`` settings
to them and refuses anything that looks like a credential, so no key ever lands in a task
override (which ECS shows to anyone who may describe the task).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from am.errors import ConfigError, LauncherError
from am.launchers.aws_stack import AwsResources, aws_message

log = logging.getLogger(__name__)

# What a service's workers must share with the job, as they keep their own environment.
SERVICE_MUST_MATCH = ("AM_QUEUE_URL", "AM_INPUT_BUCKET", "AM_OUTPUT_BUCKET")

# RunTask starts at most 10 tasks per call.
# https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RunTask.html (count)
MAX_TASKS_PER_RUN_TASK = 10
# DescribeTasks takes at most 100 task ARNs per call.
# https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_DescribeTasks.html (tasks)
MAX_TASKS_PER_DESCRIBE = 100
# All overrides of one task together may hold at most 8192 characters.
# https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_TaskOverride.html
MAX_OVERRIDE_CHARS = 8192
# startedBy: up to 128 letters, digits, '-', '_' and '/'.
# https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RunTask.html (startedBy)
STARTED_BY_PATTERN = re.compile(r"^[A-Za-z0-9_/-]{1,128}$")
# Task states that mean "running or about to": ECS task lifecycle,
# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-lifecycle-explanation.html
ALIVE_STATES = frozenset({"PROVISIONING", "PENDING", "ACTIVATING", "RUNNING"})

LAUNCH_MODES = ("run_task", "service")
STOP_REASON = "am-segm job finished"
# The stopCode of a task whose essential container exited by itself (ECS API, Task.stopCode);
# a task stopped by StopTask, a scale-in or a Spot reclaim has another one.
# https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_Task.html (stopCode)
SELF_EXIT_STOP_CODE = "EssentialContainerExited"
# The stopCode of a task that never got its containers running (an image that cannot be pulled, a role
# ECS cannot assume, no room on the instance): a rerun starts its tasks the same way and fails alike.
FAILED_TO_START_STOP_CODE = "TaskFailedToStart"
# Task ids named in a message at most; the rest are counted.
MAX_TASK_IDS_NAMED = 5
# After StopTask, ECS gives a worker its task definition's stopTimeout (at most 120 s) to finish
# its batch and report it before the SIGKILL. The job waits that long and a little more for its
# tasks to end, so the masks they report meanwhile are collected before its queue and objects go.
STOP_WAIT_S = 150.0
STOP_POLL_S = 5.0
# A task whose containers have exited: it writes and reports nothing more.
# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-lifecycle-explanation.html
ENDED_STATES = frozenset({"DEPROVISIONING", "STOPPED"})
# Capacity shortfalls (no free GPU yet, agent busy) often clear in seconds; retry them a few times.
RUN_TASK_ATTEMPTS = 3
RUN_TASK_RETRY_DELAY_S = 10.0
# Names of variables that carry credentials; never handed to a task.
CREDENTIAL_NAME = re.compile(
    r"(^AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN|SECURITY_TOKEN|CONTAINER_AUTHORIZATION_TOKEN)$)"
    r"|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY",
    re.IGNORECASE,
)
# Values shaped like AWS access key ids (long-term AKIA…, temporary ASIA…).
ACCESS_KEY_VALUE = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")


# ---------------------------------------------------------------------- worker environment


def task_environment(environment: Mapping[str, str]) -> list[dict[str, str]]:
    """The container override environment: ``AM_*`` settings only, and never a credential.

    A variable whose name or value looks like a credential raises :class:`LauncherError`
    (the caller has a bug to fix; tasks get their rights from the task role). Other non-``AM_``
    variables are dropped with a warning, since the worker reads nothing else.
    """
    entries = []
    for name, value in sorted(environment.items()):
        if CREDENTIAL_NAME.search(name) or ACCESS_KEY_VALUE.search(str(value)):
            raise LauncherError(
                f"refusing to pass variable {name} to ECS tasks: it looks like a credential, and task "
                "overrides are visible to anyone who can describe the task; workers get their rights "
                "from the task role"
            )
        if not name.startswith("AM_"):
            log.warning("not passing %s to ECS tasks: workers read only AM_* variables", name)
            continue
        entries.append({"name": name, "value": str(value)})
    return entries


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _task_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _task_ids(arns: Sequence[str]) -> str:
    """Up to MAX_TASK_IDS_NAMED task ids, and how many more: enough to look them up, short enough to read."""
    named = ", ".join(_task_id(arn) for arn in arns[:MAX_TASK_IDS_NAMED])
    more = len(arns) - MAX_TASK_IDS_NAMED
    return f"{named} and {more} more" if more > 0 else named


def _container(task: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    return next((c for c in task.get("containers", []) if c.get("name") == name), None)


def _has_run(task: Mapping[str, Any], container_name: str) -> bool:
    """Whether a task ever got its worker running: seen RUNNING, given a start time, or its worker exited.

    A task seen only between two looks (started and gone within one) still counts by its start time or
    its stopped worker's exit code; one stopped in PROVISIONING or PENDING has neither. An exit code
    counts only once the container has stopped (some answers carry one all along).
    """
    container = _container(task, container_name) or {}
    exited = container.get("lastStatus") == "STOPPED" and container.get("exitCode") is not None
    return (task.get("lastStatus") == "RUNNING" or bool(task.get("startedAt"))
            or task.get("stopCode") == SELF_EXIT_STOP_CODE or exited)


def _stop_cause(task: Mapping[str, Any], container_name: str) -> str:
    """Why one stopped task ended, in ECS's words: its stop code, stopped reason, and the worker
    container's own reason and exit code (a failed image pull is told only there, on some agents)."""
    parts = [f"stopCode {task['stopCode']}"] if task.get("stopCode") else []
    reason = task.get("stoppedReason") or ""
    if reason:
        parts.append(reason)
    container = _container(task, container_name)
    if container is not None:
        own = container.get("reason") or ""
        if own and own != reason:
            parts.append(f"container {container_name}: {own}")
        if container.get("exitCode") is not None:
            parts.append(f"exit code {container['exitCode']}")
    return ", ".join(parts) or "ECS gave no reason"


# -------------------------------------------------------------------------------- launcher


class EcsLauncher:
    """Starts workers as ECS tasks, counts the live ones, and stops what it started.

    ``mode="run_task"`` starts one-off tasks (in calls of at most 10), each leaving by itself
    after ``AM_IDLE_EXIT_S`` without work, and :meth:`stop` stops them; :meth:`exit_codes`
    tells tasks that left idle from the others, so a job can start them again. ``mode="service"``
    raises the stack's service to at least ``count`` tasks and, on :meth:`stop`, puts back the
    desired count it found, unless someone else has changed it since, and waits for the tasks it
    no longer wants to finish their batch. ``max_tasks`` caps how many of the job's tasks may be
    running at once, whatever ``count`` asks.

    When things go wrong it says what ECS knows: :meth:`log_tail` counts the causes its stopped
    tasks ended with and names their CloudWatch Logs group, :meth:`rerun_advice` says to fix a
    cause that kept them from starting, and :meth:`timeout_advice` that none of them ever ran.
    """

    # The heading of :meth:`log_tail`'s text in a job's error: ECS's account, not lines of the logs.
    log_tail_heading = "how the worker tasks ended (ECS)"

    def __init__(
        self,
        ecs_client: Any,
        resources: AwsResources,
        *,
        mode: str = "run_task",
        max_tasks: int = 10,
        started_by: str = "am-segm",
        attempts: int = RUN_TASK_ATTEMPTS,
        retry_delay_s: float = RUN_TASK_RETRY_DELAY_S,
        stop_wait_s: float = STOP_WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if mode not in LAUNCH_MODES:
            raise ConfigError(f"launch mode {mode!r} is not known: use one of {', '.join(LAUNCH_MODES)}")
        if max_tasks < 1:
            raise ConfigError(f"aws_max_tasks = {max_tasks} is not allowed: it must be at least 1")
        if not STARTED_BY_PATTERN.match(started_by):
            raise ConfigError(f"started_by {started_by!r} must be 1-128 letters, digits, '-', '_' or '/'")
        if mode == "service" and not resources.service:
            raise ConfigError("aws_launch is 'service' but no ECS service is known: set ecs_service "
                              "or stack_name to a stack with the output 'Service'")
        self._ecs = ecs_client
        self._resources = resources
        self._mode = mode
        self._max_tasks = max_tasks
        self._started_by = started_by
        self._attempts = max(1, attempts)
        self._retry_delay_s = retry_delay_s
        self._stop_wait_s = stop_wait_s
        self._sleep = sleep
        self._task_arns: list[str] = []
        self._stopped: set[str] = set()
        # What ECS said about each task once it had stopped (a stopped task never changes).
        self._stopped_tasks: dict[str, dict[str, Any]] = {}
        # Tasks seen running (or known to have run) at least once: a job whose tasks never ran timed out
        # waiting for capacity, not for want of time or workers (timeout_advice).
        self._ran: set[str] = set()
        # The service's task count, and whether any of its tasks was seen running since this job raised it.
        self._service_wanted = 0
        self._service_ran = False
        # Each task definition's CloudWatch Logs group and stream prefix of the worker ("" where it has none).
        self._log_places: dict[str, tuple[str, str]] = {}
        self._service_original: int | None = None
        self._service_set: int | None = None

    @property
    def task_arns(self) -> tuple[str, ...]:
        """ARNs of the tasks this launcher started, in order."""
        return tuple(self._task_arns)

    # ----------------------------------------------------------------------------- start

    def start(self, count: int, environment: Mapping[str, str]) -> None:
        """Start ``count`` workers, no more than ``max_tasks`` of this launcher's tasks not known to have stopped.

        Tasks count until :meth:`alive` has seen them stopped, so workers that left idle can be
        replaced without the cap refusing them.
        """
        if count < 1:
            raise LauncherError(f"asked to start {count} workers; ask for at least 1")
        if self._mode == "service":
            self._raise_service(count, environment)
            return
        live = len(self._task_arns) - len(self._stopped)
        room = self._max_tasks - live
        if room <= 0:
            log.warning("not starting more tasks: %d of this job's tasks are still running (aws_max_tasks %d)",
                        live, self._max_tasks)
            return
        if count > room:
            log.info("starting %d tasks instead of %d: aws_max_tasks is %d", room, count, self._max_tasks)
            count = room
        request = self._run_task_request(environment)
        wanted = count
        reasons: list[str] = []
        for attempt in range(1, self._attempts + 1):
            started_now, failures = self._run_tasks(request, wanted)
            wanted -= started_now
            reasons = failures or reasons
            if wanted <= 0:
                break
            if attempt < self._attempts:
                log.warning("ECS started %d of %d tasks (%s); retrying in %.0f s",
                            count - wanted, count, "; ".join(failures) or "no reason given", self._retry_delay_s)
                self._sleep(self._retry_delay_s)
        started = count - wanted
        reason_text = "; ".join(sorted(set(reasons))) or "ECS gave no reason"
        if started == 0:
            raise LauncherError(
                f"ECS started none of {count} worker tasks on cluster {self._resources.cluster} after "
                f"{self._attempts} attempts: {reason_text}. Check that the cluster has GPU capacity "
                "(capacity provider or container instances) and that the task definition is valid"
            )
        if wanted > 0:
            log.warning("ECS started only %d of %d worker tasks (%s); the job continues with fewer",
                        started, count, reason_text)
        log.info("%d worker tasks started on cluster %s", started, self._resources.cluster)

    def _run_task_request(self, environment: Mapping[str, str]) -> dict[str, Any]:
        overrides = {"containerOverrides": [{"name": self._resources.container_name,
                                             "environment": task_environment(environment)}]}
        size = len(json.dumps(overrides, separators=(",", ":")))
        if size > MAX_OVERRIDE_CHARS:
            raise LauncherError(f"task overrides are {size} characters; ECS allows {MAX_OVERRIDE_CHARS}. "
                                "Shorten the AM_* values (e.g. the model URI)")
        request: dict[str, Any] = {
            "cluster": self._resources.cluster,
            "taskDefinition": self._resources.task_definition,
            "overrides": overrides,
            "startedBy": self._started_by,
            "enableECSManagedTags": True,
            "propagateTags": "TASK_DEFINITION",
        }
        if self._resources.capacity_provider:
            request["capacityProviderStrategy"] = [
                {"capacityProvider": self._resources.capacity_provider, "weight": 1, "base": 0}]
        else:
            request["launchType"] = "EC2"
        if self._resources.subnets:
            request["networkConfiguration"] = {"awsvpcConfiguration": {
                "subnets": list(self._resources.subnets),
                "securityGroups": list(self._resources.security_groups),
            }}
        return request

    def _run_tasks(self, request: Mapping[str, Any], count: int) -> tuple[int, list[str]]:
        """Run ``count`` tasks in calls of at most 10; returns how many started and the failure reasons."""
        started = 0
        reasons: list[str] = []
        while started < count:
            batch = min(MAX_TASKS_PER_RUN_TASK, count - started)
            try:
                response = self._ecs.run_task(count=batch, **request)
            except (ClientError, BotoCoreError) as exc:
                raise LauncherError(
                    f"ECS run_task on cluster {self._resources.cluster} with task definition "
                    f"{self._resources.task_definition} failed: {aws_message(exc)}"
                ) from exc
            arns = [task["taskArn"] for task in response.get("tasks", [])]
            self._task_arns.extend(arns)
            started += len(arns)
            failures = [f"{f.get('reason', 'unknown')}" + (f" ({f['detail']})" if f.get("detail") else "")
                        for f in response.get("failures", [])]
            reasons.extend(failures)
            for arn in arns:
                log.info("started worker task %s", _task_id(arn))
            if len(arns) < batch:
                # No room for the rest now; the caller decides whether to retry.
                break
        return started, reasons

    def _raise_service(self, count: int, environment: Mapping[str, str]) -> None:
        service = self._describe_service()
        self._check_service_queue(service, environment)
        desired = int(service.get("desiredCount", 0))
        target = min(count, self._max_tasks)
        if self._service_original is None:
            self._service_original = desired
        if desired >= target:
            log.info("service %s already wants %d tasks (>= %d); leaving it", self._resources.service, desired, target)
            return
        self._update_service(target)
        self._service_set = target
        log.info("service %s raised from %d to %d tasks", self._resources.service, desired, target)

    def _check_service_queue(self, service: Mapping[str, Any], environment: Mapping[str, str]) -> None:
        """Service tasks keep their task definition's environment; make sure they read this job's queue
        and buckets (messages carry keys, not buckets: workers of other buckets find no tile)."""
        wanted = {name: environment[name] for name in SERVICE_MUST_MATCH if environment.get(name)}
        if not wanted:
            return
        try:
            task_def = self._ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
        except (ClientError, BotoCoreError) as exc:
            raise LauncherError(f"cannot read the task definition of service {self._resources.service}: "
                                f"{aws_message(exc)}") from exc
        for container in task_def.get("containerDefinitions", []):
            if container.get("name") != self._resources.container_name:
                continue
            env = {e["name"]: e["value"] for e in container.get("environment", [])}
            differ = [f"{name} {env[name]} (this job: {value})" for name, value in wanted.items()
                      if env.get(name, value) != value]
            if differ:
                raise LauncherError(
                    f"service {self._resources.service}'s workers use {', '.join(differ)}; use aws_launch: "
                    "run_task, or point queue_name, input_bucket and output_bucket at the service's"
                )
        if environment:
            log.info("service mode: workers keep the service's task definition environment; "
                     "per-job AM_* settings other than the queue and buckets do not apply")

    def _describe_service(self) -> dict[str, Any]:
        try:
            response = self._ecs.describe_services(cluster=self._resources.cluster, services=[self._resources.service])
        except (ClientError, BotoCoreError) as exc:
            raise LauncherError(f"cannot describe ECS service {self._resources.service} on cluster "
                                f"{self._resources.cluster} (settings ecs_service, ecs_cluster, or the stack's "
                                f"Service and Cluster outputs): {aws_message(exc)}") from exc
        services = [s for s in response.get("services", []) if s.get("status") != "INACTIVE"]
        if not services:
            reasons = "; ".join(f.get("reason", "") for f in response.get("failures", []))
            raise LauncherError(f"ECS service {self._resources.service} not found on cluster "
                                f"{self._resources.cluster} ({reasons or 'inactive'}); check ecs_service")
        return services[0]

    def _update_service(self, desired: int) -> None:
        try:
            self._ecs.update_service(cluster=self._resources.cluster, service=self._resources.service,
                                     desiredCount=desired)
        except (ClientError, BotoCoreError) as exc:
            raise LauncherError(f"cannot set the desired count of ECS service {self._resources.service} "
                                f"to {desired}: {aws_message(exc)}") from exc

    # ----------------------------------------------------------------------------- alive

    def alive(self) -> int:
        """Started tasks that are running or on their way (PROVISIONING, PENDING, ACTIVATING, RUNNING).

        A service's own counts leave out the tasks waiting for a GPU instance to boot (PROVISIONING,
        minutes on a cluster scaled to zero) and those its scheduler has not created yet: a
        service keeps as many tasks on their way as it wants, so its desired count is the floor.
        """
        if self._mode == "service":
            service = self._describe_service()
            placed = int(service.get("runningCount", 0)) + int(service.get("pendingCount", 0))
            self._service_wanted = int(service.get("desiredCount", 0))
            self._service_ran = self._service_ran or int(service.get("runningCount", 0)) > 0
            return max(placed, self._service_wanted)
        alive = 0
        candidates = [arn for arn in self._task_arns if arn not in self._stopped]
        for chunk in _chunks(candidates, MAX_TASKS_PER_DESCRIBE):
            try:
                response = self._ecs.describe_tasks(cluster=self._resources.cluster, tasks=list(chunk))
            except (ClientError, BotoCoreError) as exc:
                raise LauncherError(f"cannot describe worker tasks on cluster {self._resources.cluster}: "
                                    f"{aws_message(exc)}") from exc
            for task in response.get("tasks", []):
                if _has_run(task, self._resources.container_name):
                    self._ran.add(task["taskArn"])
                if task.get("lastStatus") in ALIVE_STATES and task.get("desiredStatus") != "STOPPED":
                    alive += 1
                elif task.get("lastStatus") == "STOPPED":
                    self._stopped.add(task["taskArn"])
                    self._stopped_tasks[task["taskArn"]] = task
                    log.info("worker task %s stopped: %s", _task_id(task["taskArn"]),
                             task.get("stoppedReason") or task.get("stopCode") or "no reason given")
        return alive

    def exit_codes(self) -> list[int | None]:
        """The worker's exit code for each task started, in start order, as the last :meth:`alive` saw them.

        A code is given only for a task that stopped because its worker exited by itself (stopCode
        ``EssentialContainerExited``): 0 is an idle exit, anything else a failure. A task still
        running, one stopped by someone else (StopTask, ``am.scale drain``, a scale-in, a Spot
        reclaim: its worker exits 0 on SIGTERM too) or one ECS no longer describes gives None,
        so a job never mistakes it for one that left idle and starts it again.
        """
        codes: list[int | None] = []
        for arn in self._task_arns:
            task = self._stopped_tasks.get(arn)
            code = None
            if task is not None and task.get("stopCode") == SELF_EXIT_STOP_CODE:
                container = next((c for c in task.get("containers", [])
                                  if c.get("name") == self._resources.container_name), None)
                if container is not None and container.get("exitCode") is not None:
                    code = int(container["exitCode"])
            codes.append(code)
        return codes

    # ------------------------------------------------------------------------ what went wrong

    def _stopped_in_order(self) -> list[dict[str, Any]]:
        return [self._stopped_tasks[arn] for arn in self._task_arns if arn in self._stopped_tasks]

    def log_tail(self) -> str:
        """How the job's stopped tasks ended, for the error when none is left: each distinct cause ECS gave,
        with its count, and where the workers' logs are.

        A job's error otherwise says only that every worker stopped, and a rerun that fails the same
        way says no more. ECS keeps the cause of a stop for about an hour; the logs themselves are
        in CloudWatch Logs, which this names rather than reads. Service tasks are not the job's: it
        describes none of them.
        """
        if self._mode == "service":
            service, cluster = self._resources.service, self._resources.cluster
            return (f"  the tasks of service {service} are the service's, not the job's: see its events (aws ecs "
                    f"describe-services --cluster {cluster} --services {service}) and the worker logs")
        stopped = self._stopped_in_order()
        if not stopped:
            return "  ECS has described none of this job's tasks as stopped"
        name = self._resources.container_name
        causes = Counter(_stop_cause(task, name) for task in stopped)
        lines = [f"  {count} task(s): {cause}" for cause, count in causes.most_common()]
        lines.append(self._log_hint(stopped))
        return "\n".join(lines)

    def _log_hint(self, stopped: Sequence[Mapping[str, Any]]) -> str:
        """Where to read the stopped tasks' logs: the CloudWatch Logs group and streams their task definition names."""
        ran = [task["taskArn"] for task in stopped if task.get("stopCode") != FAILED_TO_START_STOP_CODE]
        never = len(stopped) - len(ran)
        none_written = f"; the {never} task(s) that failed to start wrote no log" if never else ""
        if not ran:
            return f"  worker logs: none{none_written}"
        group, prefix = self._log_place(str(stopped[0].get("taskDefinitionArn") or self._resources.task_definition))
        if not group:
            return (f"  worker logs: search CloudWatch Logs (the stack's LogGroup output) for the task ids "
                    f"{_task_ids(ran)}{none_written}")
        streams = f"{prefix}/{self._resources.container_name}/<task id>" if prefix else "named with the task id"
        return (f"  worker logs: CloudWatch Logs group {group}, streams {streams} (tasks {_task_ids(ran)})"
                f"{none_written}")

    def _log_place(self, task_definition: str) -> tuple[str, str]:
        """The worker container's awslogs group and stream prefix in ``task_definition``; ("", "") where it names
        none or cannot be read (this only adds to an error message, so it never raises)."""
        if task_definition not in self._log_places:
            place = ("", "")
            try:
                described = self._ecs.describe_task_definition(taskDefinition=task_definition)["taskDefinition"]
            except (ClientError, BotoCoreError, KeyError) as exc:
                log.debug("cannot read the log configuration of task definition %s: %s", task_definition, exc)
            else:
                container = next((c for c in described.get("containerDefinitions", [])
                                  if c.get("name") == self._resources.container_name), {})
                options = (container.get("logConfiguration") or {}).get("options") or {}
                place = (options.get("awslogs-group", ""), options.get("awslogs-stream-prefix", ""))
            self._log_places[task_definition] = place
        return self._log_places[task_definition]

    def rerun_advice(self) -> str | None:
        """What to do before a rerun when ECS could not start the job's tasks; None where it started them.

        A task stopped with ``TaskFailedToStart`` (an image that cannot be pulled, a role ECS cannot
        assume, an instance without room or agent) never ran a worker: a rerun starts its tasks the
        same way and fails alike, so "rerun to resume" alone would send the user round in a circle.
        """
        stopped = self._stopped_in_order()
        failed = [task for task in stopped if task.get("stopCode") == FAILED_TO_START_STOP_CODE]
        if not failed:
            return None
        causes = Counter(_stop_cause(task, self._resources.container_name) for task in failed)
        listing = "; ".join(cause for cause, _count in causes.most_common())
        return (f"{len(failed)} of the {len(stopped)} stopped worker task(s) failed to start on cluster "
                f"{self._resources.cluster} ({listing}): fix that cause first (the worker image and its tag in ECR, "
                f"the task and task execution roles, the GPU instances and their ECS agent), then rerun the same "
                f"command to resume; a rerun before that fails the same way")

    def timeout_advice(self) -> str | None:
        """The advice for a job that ran out of time while none of its tasks ever ran; None where one did.

        Tasks wait in PROVISIONING while no GPU instance joins the cluster or has room (instances
        in subnets without a public IPv4 address or a NAT gateway never join): more time or more
        workers would wait the same way. Looks at the tasks once more first, so a task that ran
        since the last look counts.
        """
        try:
            self.alive()
        except LauncherError as exc:
            log.debug("cannot look at the worker tasks again before the timeout's message: %s", exc)
        if self._mode == "service":
            count, ran, what = self._service_wanted, self._service_ran, f"task(s) of service {self._resources.service}"
        else:
            count, ran, what = len(self._task_arns), bool(self._ran), "worker task(s)"
        if count == 0 or ran:
            return None
        provider = (f"the capacity provider {self._resources.capacity_provider}" if self._resources.capacity_provider
                    else "the cluster's capacity provider or container instances")
        return (f"none of the {count} {what} started running on cluster {self._resources.cluster}: no GPU instance "
                f"joined the cluster or had room for them (check that the instances' subnets give them a public IPv4 "
                f"address or route through a NAT gateway, {provider}, and the stack's MaxInstances); fix that, "
                "then rerun to resume")

    # ------------------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop every task this launcher started, or restore the service's desired count; idempotent.

        Every task is tried even when some fail; failures are then raised together, so a failure
        path that calls this still learns which tasks may keep running (and costing). StopTask
        returns at once, while the worker still finishes its batch: the tasks stopped are waited
        for (at most ``stop_wait_s``), so that what they write and report comes before the job
        deletes its queue and objects, not after. Lowering a service's count back is waited for
        the same way, where this job lowered it.
        """
        if self._mode == "service":
            self._restore_service()
            return
        failed: dict[str, str] = {}
        stopping: list[str] = []
        for arn in self._task_arns:
            if arn in self._stopped:
                continue
            try:
                self._ecs.stop_task(cluster=self._resources.cluster, task=arn, reason=STOP_REASON)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidParameterException" and \
                        "not found" in exc.response.get("Error", {}).get("Message", "").lower():
                    self._stopped.add(arn)
                    continue
                failed[_task_id(arn)] = aws_message(exc)
                log.error("could not stop worker task %s: %s", _task_id(arn), failed[_task_id(arn)])
                continue
            except BotoCoreError as exc:
                failed[_task_id(arn)] = str(exc)
                log.error("could not stop worker task %s: %s", _task_id(arn), exc)
                continue
            self._stopped.add(arn)
            stopping.append(arn)
            log.info("stopped worker task %s", _task_id(arn))
        self._wait_until_ended(stopping)
        if failed:
            listing = ", ".join(f"{task} ({why})" for task, why in sorted(failed.items()))
            raise LauncherError(
                f"could not stop {len(failed)} worker task(s) on cluster {self._resources.cluster}: {listing}; "
                f"stop them with `python -m am.scale drain` or the ECS console"
            )

    def _wait_until_ended(self, arns: Sequence[str]) -> None:
        """Wait until the tasks' containers have exited, at most ``stop_wait_s``; a task ECS no longer
        describes has ended. Only logged when it cannot be told: the clean-up must go on."""
        waiting = list(arns)
        if not waiting:
            return
        log.info("waiting up to %.0f s for %d worker task(s) to finish their batch and stop",
                 self._stop_wait_s, len(waiting))
        waited = 0.0
        while True:
            try:
                waiting = self._not_ended(waiting)
            except (ClientError, BotoCoreError) as exc:
                log.warning("cannot tell whether the worker tasks have stopped (%s); going on without waiting",
                            aws_message(exc) if isinstance(exc, ClientError) else exc)
                return
            if not waiting:
                return
            if waited >= self._stop_wait_s:
                log.warning("%d worker task(s) still stopping after %.0f s (%s); masks they report later are lost "
                            "and a rerun segments those tiles again", len(waiting), waited,
                            ", ".join(_task_id(arn) for arn in waiting))
                return
            pause = min(STOP_POLL_S, self._stop_wait_s - waited)
            self._sleep(pause)
            waited += pause

    def _not_ended(self, arns: Sequence[str]) -> list[str]:
        running: list[str] = []
        for chunk in _chunks(arns, MAX_TASKS_PER_DESCRIBE):
            response = self._ecs.describe_tasks(cluster=self._resources.cluster, tasks=list(chunk))
            for task in response.get("tasks", []):
                containers = task.get("containers", [])
                exited = bool(containers) and all(c.get("lastStatus") == "STOPPED" for c in containers)
                if task.get("lastStatus") not in ENDED_STATES and not exited:
                    running.append(task["taskArn"])
        return running

    def _restore_service(self) -> None:
        if self._service_set is None or self._service_original is None:
            return
        current = int(self._describe_service().get("desiredCount", 0))
        if current != self._service_set:
            # Not lowered by this job: what runs now is someone else's choice, so nothing is awaited.
            log.info("service %s now wants %d tasks (someone changed it after this job set %d); leaving it",
                     self._resources.service, current, self._service_set)
            self._service_set = None
            return
        self._update_service(self._service_original)
        log.info("service %s back to %d tasks", self._resources.service, self._service_original)
        self._service_set = None
        self._wait_for_service(self._service_original)

    def _wait_for_service(self, desired: int) -> None:
        """Wait until the service runs at most ``desired`` tasks again, at most ``stop_wait_s``.

        Lowering the desired count returns at once, as StopTask does: ECS then stops the extra tasks,
        whose workers finish their batch first. The job deletes its queue and objects once this returns,
        so the wait is :meth:`stop`'s for its own tasks. Only logged when it cannot be told: the clean-up
        must go on.
        """
        waited = 0.0
        while True:
            try:
                service = self._describe_service()
            except LauncherError as exc:
                log.warning("cannot tell whether service %s has stopped its extra tasks (%s); going on without "
                            "waiting", self._resources.service, exc)
                return
            placed = int(service.get("runningCount", 0)) + int(service.get("pendingCount", 0))
            if placed <= desired:
                return
            if waited == 0.0:
                log.info("waiting up to %.0f s for service %s to stop %d of its %d task(s) (back to %d) once they "
                         "have finished their batch", self._stop_wait_s, self._resources.service, placed - desired,
                         placed, desired)
            if waited >= self._stop_wait_s:
                log.warning("service %s still runs %d task(s) after %.0f s (back to %d); masks they report later are "
                            "lost and a rerun segments those tiles again", self._resources.service, placed, waited,
                            desired)
                return
            pause = min(STOP_POLL_S, self._stop_wait_s - waited)
            self._sleep(pause)
            waited += pause


__all__ = [
    "MAX_TASKS_PER_DESCRIBE",
    "MAX_TASKS_PER_RUN_TASK",
    "EcsLauncher",
    "task_environment",
]
