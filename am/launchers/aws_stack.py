"""Where a deployment's queues, buckets and ECS pieces are: the CloudFormation stack's outputs and the settings.

:func:`resolve_aws_resources` reads them once per command into an :class:`AwsResources`, which
the launcher, the job and ``am.scale`` all work from. A missing or unusable piece is a
:class:`ConfigError` that names the setting or stack output to fix::

    resources = resolve_aws_resources(settings, cloudformation_client=cfn, sqs_client=sqs)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from am.errors import ConfigError
from am.settings import Settings
from am.transport.queue import parse_max_receive_count

log = logging.getLogger(__name__)

DEFAULT_CONTAINER_NAME = "worker"
# Stack states in which the outputs describe resources that exist.
USABLE_STACK_STATES = frozenset({
    "CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE",
    "IMPORT_ROLLBACK_COMPLETE",
})


@dataclass(frozen=True)
class AwsResources:
    """Where a job's queues, buckets and workers live on AWS; what the stack's outputs describe."""

    queue_url: str
    dead_letter_queue_url: str
    input_bucket: str
    output_bucket: str
    model_uri: str
    cluster: str
    task_definition: str
    service: str
    capacity_provider: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    container_name: str = DEFAULT_CONTAINER_NAME
    # Receives before SQS moves a tile to the dead-letter queue (the tile queue's RedrivePolicy);
    # 0 when the queue has none, which am.backends.require_dead_letter_queue refuses for a job.
    max_receive_count: int = 0
    # Seconds a received tile stays hidden (the workers ask for it on every receive): the tile
    # queue's own VisibilityTimeout (the stack's VisibilityTimeoutSeconds) unless the settings set
    # visibility_timeout_s; 0 where neither is known (the settings' value is then used).
    visibility_timeout_s: int = 0


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in fields(Settings)}


def _explicit(settings: Settings, key: str) -> str:
    """The setting's value when someone set it (differs from the default), else ""."""
    value = getattr(settings, key)
    return str(value) if value != _defaults()[key] else ""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def read_stack_outputs(cloudformation_client: Any, stack_name: str) -> dict[str, str]:
    """The outputs of a deployed stack, as ``{OutputKey: OutputValue}``."""
    # A stack deployed in another region is "not found" here: the message says which region was searched.
    region = getattr(getattr(cloudformation_client, "meta", None), "region_name", None) or "?"
    try:
        stacks = cloudformation_client.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", str(exc))
        raise ConfigError(
            f"cannot read CloudFormation stack {stack_name!r} in region {region}: {message}; deploy it with "
            "`make deploy`, set stack_name (AM_STACK_NAME) to the name it was deployed under, or set region "
            "(AM_REGION, or AWS_REGION where neither AM_REGION nor the config file sets it) to where it was deployed"
        ) from exc
    except BotoCoreError as exc:
        raise ConfigError(f"cannot reach CloudFormation to read stack {stack_name!r}: {exc}") from exc
    if not stacks:
        raise ConfigError(f"CloudFormation stack {stack_name!r} not found in region {region}; deploy it with "
                          "`make deploy`, or set region (AM_REGION) to where it was deployed")
    stack = stacks[0]
    status = stack.get("StackStatus", "")
    if status not in USABLE_STACK_STATES:
        raise ConfigError(
            f"CloudFormation stack {stack_name!r} is {status}; wait for the deployment to finish "
            "or fix it (see its events in the CloudFormation console)"
        )
    return {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", []) if o.get("OutputValue")}


def _queue_url(sqs_client: Any, name: str, setting: str) -> str:
    try:
        return sqs_client.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        raise ConfigError(
            f"SQS queue {name!r} (setting {setting}) not found: {exc.response.get('Error', {}).get('Code')}; "
            "deploy the stack (make deploy) and set stack_name, or fix the queue name"
        ) from exc
    except BotoCoreError as exc:
        raise ConfigError(f"cannot reach SQS to look up queue {name!r}: {exc}") from exc


def read_tile_queue_attributes(sqs_client: Any, queue_url: str) -> dict[str, str]:
    """The tile queue's RedrivePolicy and VisibilityTimeout, in one call; ConfigError naming the queue
    and the grant where they cannot be read."""
    try:
        attributes = sqs_client.get_queue_attributes(QueueUrl=queue_url,
                                                     AttributeNames=["RedrivePolicy", "VisibilityTimeout"])
    except ClientError as exc:
        raise ConfigError(f"cannot read the attributes of tile queue {queue_url}: {aws_message(exc)}; "
                          "the caller needs sqs:GetQueueAttributes on it (the stack's OperatorPolicy has it)") from exc
    except BotoCoreError as exc:
        raise ConfigError(f"cannot reach SQS to read the attributes of tile queue {queue_url}: {exc}") from exc
    return attributes.get("Attributes", {})


def max_receive_count_of(attributes: dict[str, str], queue_url: str) -> int:
    """The tile queue's own ``maxReceiveCount`` (its RedrivePolicy), or 0 when it has no dead-letter queue.

    SQS, not the settings, decides when a failing tile leaves for the dead-letter queue: a stack
    deployed with ``MaxReceiveCount=5`` retries five times whatever ``max_receive_count`` says,
    so the orchestrator must give up after the same number of attempts, not earlier.
    """
    policy = attributes.get("RedrivePolicy", "")
    if not policy:
        return 0
    try:
        return parse_max_receive_count(policy)
    except ValueError as exc:
        raise ConfigError(f"tile queue {queue_url}: {exc}; fix it on the queue (or redeploy the stack)") from exc


def resolve_aws_resources(settings: Settings, *, cloudformation_client: Any, sqs_client: Any) -> AwsResources:
    """Find the job's AWS resources: the stack's outputs, with explicitly set settings taking precedence.

    Without ``stack_name`` everything comes from the settings (queue URLs are looked up by
    name). A missing piece raises :class:`ConfigError` naming the setting or stack output to provide.
    """
    outputs = read_stack_outputs(cloudformation_client, settings.stack_name) if settings.stack_name else {}
    source = f"stack {settings.stack_name!r}" if settings.stack_name else "the settings"

    stack_prefix = outputs.get("ResultsQueuePrefix", "")
    if stack_prefix and stack_prefix != settings.results_queue_prefix:
        raise ConfigError(
            f"results_queue_prefix is {settings.results_queue_prefix!r} but the workers of stack "
            f"{settings.stack_name!r} may only report to queues named {stack_prefix}-*; "
            f"set results_queue_prefix: {stack_prefix}"
        )

    def pick(key: str, output: str, *, required: bool) -> str:
        value = _explicit(settings, key) or outputs.get(output, "") or str(getattr(settings, key))
        if required and not value:
            raise ConfigError(
                f"no value for {key}: set it in the config file or as AM_{key.upper()}, "
                f"or set stack_name to a stack with the output {output!r} (looked in {source})"
            )
        return value

    queue_url = outputs.get("QueueUrl", "")
    if _explicit(settings, "queue_name") or not queue_url:
        queue_url = _queue_url(sqs_client, settings.queue_name, "queue_name")
    dlq_url = outputs.get("DeadLetterQueueUrl", "")
    if _explicit(settings, "dead_letter_queue_name") or not dlq_url:
        dlq_url = _queue_url(sqs_client, settings.dead_letter_queue_name, "dead_letter_queue_name")
    attributes = read_tile_queue_attributes(sqs_client, queue_url)
    max_receive_count = max_receive_count_of(attributes, queue_url)
    overridden = _explicit(settings, "max_receive_count") and settings.max_receive_count != max_receive_count
    if max_receive_count and overridden:
        log.warning("max_receive_count %d does not apply: tile queue %s moves a tile to the dead-letter queue after "
                    "%d receives, so the job gives up after %d attempts (change MaxReceiveCount on the stack)",
                    settings.max_receive_count, queue_url, max_receive_count, max_receive_count)

    resources = AwsResources(
        queue_url=queue_url,
        dead_letter_queue_url=dlq_url,
        input_bucket=pick("input_bucket", "InputBucket", required=True),
        output_bucket=pick("output_bucket", "OutputBucket", required=True),
        model_uri=outputs.get("ModelUri", ""),
        cluster=pick("ecs_cluster", "Cluster", required=True),
        task_definition=pick("ecs_task_definition", "TaskDefinition", required=True),
        service=pick("ecs_service", "Service", required=settings.aws_launch == "service"),
        capacity_provider=pick("ecs_capacity_provider", "CapacityProvider", required=False),
        subnets=_split(settings.ecs_subnets),
        security_groups=_split(settings.ecs_security_groups),
        container_name=outputs.get("ContainerName", "") or DEFAULT_CONTAINER_NAME,
        max_receive_count=max_receive_count,
        visibility_timeout_s=int(_explicit(settings, "visibility_timeout_s")
                                 or attributes.get("VisibilityTimeout", 0)),
    )
    if resources.input_bucket == resources.output_bucket:
        raise ConfigError(f"input_bucket and output_bucket are both {resources.input_bucket!r} (from {source}): a "
                          "mask is written under its tile's key, so one bucket would overwrite the tiles; give two")
    if resources.queue_url == resources.dead_letter_queue_url:
        raise ConfigError(f"the tile queue and its dead-letter queue are both {resources.queue_url} (from {source}): "
                          "tiles given up on would come back to the workers; give two queues")
    log.info("AWS resources from %s: cluster %s, task definition %s, queue %s",
             source, resources.cluster, resources.task_definition, resources.queue_url)
    return resources


def aws_message(exc: Exception) -> str:
    """``Code: Message`` of an AWS error, the part an operator can act on, without botocore's preamble."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return str(exc)
