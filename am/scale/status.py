"""What the workers are doing: queue depth, dead letters, the service and the one-off tasks.

::

    status = read_status(resources, sqs_client=sqs, ecs_client=ecs, autoscaling_client=aas)
    print(format_status(status))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from am.launchers.aws_stack import AwsResources
from am.scale.tasks import (
    cluster_tasks,
    describe_service,
    is_one_off,
    is_service_task,
    service_target,
    short_name,
)
from am.transport.queue import Queue

PENDING_STATES = frozenset({"PROVISIONING", "PENDING", "ACTIVATING"})


@dataclass(frozen=True)
class ClusterStatus:
    """One snapshot; SQS counts are approximate (SQS says so), task counts are exact."""

    queue: str
    waiting: int
    in_flight: int
    dead_letter_queue: str
    dead_letters: int
    cluster: str
    service: str
    desired: int | None
    service_running: int
    service_pending: int
    min_tasks: int | None
    max_tasks: int | None
    scale_out_suspended: bool | None
    one_off_running: int
    one_off_pending: int
    other_running: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_status(resources: AwsResources, *, sqs_client: Any, ecs_client: Any,
                autoscaling_client: Any | None) -> ClusterStatus:
    """Read queues, service, scaling target and tasks; the service parts are empty without a service."""
    queue = Queue(sqs_client, resources.queue_url)
    dead_letter_queue = Queue(sqs_client, resources.dead_letter_queue_url)
    depth, dead = queue.depth(), dead_letter_queue.depth()
    desired = service_running = service_pending = None
    min_tasks = max_tasks = suspended = None
    if resources.service:
        service = describe_service(ecs_client, resources)
        desired = int(service.get("desiredCount", 0))
        service_running = int(service.get("runningCount", 0))
        service_pending = int(service.get("pendingCount", 0))
        if autoscaling_client is not None:
            target = service_target(autoscaling_client, resources)
            if target:
                min_tasks, max_tasks = int(target["MinCapacity"]), int(target["MaxCapacity"])
                suspended = bool(target.get("SuspendedState", {}).get("DynamicScalingOutSuspended", False))
    tasks = cluster_tasks(ecs_client, resources.cluster)
    one_off = [t for t in tasks if is_one_off(t)]
    other = [t for t in tasks if not is_one_off(t) and not is_service_task(t)]
    return ClusterStatus(
        queue=queue.name,
        waiting=depth["visible"],
        in_flight=depth["in_flight"],
        dead_letter_queue=dead_letter_queue.name,
        dead_letters=dead["visible"] + dead["in_flight"],
        cluster=short_name(resources.cluster),
        service=short_name(resources.service) if resources.service else "",
        desired=desired,
        service_running=service_running or 0,
        service_pending=service_pending or 0,
        min_tasks=min_tasks,
        max_tasks=max_tasks,
        scale_out_suspended=suspended,
        one_off_running=sum(1 for t in one_off if t.get("lastStatus") == "RUNNING"),
        one_off_pending=sum(1 for t in one_off if t.get("lastStatus") in PENDING_STATES),
        other_running=len(other),
    )


def format_status(status: ClusterStatus) -> str:
    """A short, aligned report for a terminal."""
    rows = [
        ("tile queue", f"{status.queue}: {status.waiting} waiting, {status.in_flight} in flight"),
        ("dead letters", f"{status.dead_letter_queue}: {status.dead_letters}"
                         + ("  (see `am.scale redrive --dry-run`)" if status.dead_letters else "")),
        ("cluster", status.cluster),
    ]
    if status.service:
        line = (f"{status.service}: desired {status.desired}, running {status.service_running}, "
                f"pending {status.service_pending}")
        rows.append(("service", line))
        if status.min_tasks is not None:
            limits = f"min {status.min_tasks}, max {status.max_tasks}"
            if status.scale_out_suspended:
                limits += ", scale-out suspended (drained; `am.scale resume` to undo)"
            rows.append(("auto scaling", limits))
        else:
            rows.append(("auto scaling", "none"))
    rows.append(("one-off tasks", f"running {status.one_off_running}, pending {status.one_off_pending}"))
    if status.other_running:
        rows.append(("other tasks", str(status.other_running)))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
