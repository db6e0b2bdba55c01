"""Operators' view of the AWS workers: queue depth, tasks, scaling, draining, re-driving.

The command line (``python -m am.scale --help``) wraps these functions; each takes the
boto3 clients it needs and the :class:`~am.launchers.aws_stack.AwsResources` of the stack::

    status = read_status(resources, sqs_client=sqs, ecs_client=ecs, autoscaling_client=aas)
    print(format_status(status))
    report = redrive(sqs, resources, drop_orphans=True)
"""

from am.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from am.scale.control import drain, resume, set_desired_count, set_limits, start_tasks
    from am.scale.redrive import RedriveReport, redrive
    from am.scale.status import ClusterStatus, format_status, read_status

# Each name loads with its module on first use, not with the package: see am.lazy.
_EXPORTS = {
    "drain": "am.scale.control",
    "resume": "am.scale.control",
    "set_desired_count": "am.scale.control",
    "set_limits": "am.scale.control",
    "start_tasks": "am.scale.control",
    "RedriveReport": "am.scale.redrive",
    "redrive": "am.scale.redrive",
    "ClusterStatus": "am.scale.status",
    "format_status": "am.scale.status",
    "read_status": "am.scale.status",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ClusterStatus",
    "RedriveReport",
    "drain",
    "format_status",
    "read_status",
    "redrive",
    "resume",
    "set_desired_count",
    "set_limits",
    "start_tasks",
]
