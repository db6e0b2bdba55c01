"""Fixtures for the AWS tests: moto in-process, the stack deployed on it, an ECS cluster with GPU hosts."""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws
from moto.moto_api import state_manager

from am.launchers.aws_stack import AwsResources
from am.transport.clients import ClientFactory

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "infra" / "am-segm.yml"
REGION = "us-east-1"
STACK = "am-segm-test"
# A small task definition, so that moto's container instances (4 vCPU, 7.3 GiB) hold four tasks each.
TASK_CPU = 1024
TASK_MEMORY = 1024
TASKS_PER_INSTANCE = 4
# One of the images moto knows without asking (describe_images over all of them takes seconds).
MOTO_AMI = "ami-12c6146b"


# One session for the clients the tests use to set up and inspect moto: it loads each service
# model once (EC2's alone takes half a second), where the code under test builds its own. Made at
# the first test's call, not on import: by then the developer's AWS_PROFILE and the like are unset.
@functools.cache
def _session() -> boto3.session.Session:
    return boto3.session.Session()


def client(service: str) -> Any:
    return _session().client(service, region_name=REGION)


class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation YAML: short-form intrinsics (!Ref, !Sub, ...) become {"Ref": ...} etc."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=CfnLoader)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, fake_aws_credentials: None) -> Iterator[ClientFactory]:
    for name in ("AM_CONFIG", "AM_STACK_NAME", "AM_ENDPOINT_URL", "AM_REGION"):
        monkeypatch.delenv(name, raising=False)
    # moto moves a task one state on (RUNNING -> DEACTIVATING -> ... STOPPED) at every describe,
    # as if workers exited at once; here tasks run until they are stopped, as workers with work do.
    state_manager.set_transition("ecs::task", {"progression": "manual", "times": 10**9})
    try:
        with mock_aws():
            yield ClientFactory(region=REGION)
    finally:
        state_manager.unset_transition("ecs::task")


def deploy_stack(*, stack_name: str = STACK, parameters: Mapping[str, str] | None = None) -> dict[str, str]:
    """Create the stack on moto; returns its outputs. moto skips the resource types it lacks (with a warning).

    ``parameters`` are template parameters beside the network ones (``STACK_PARAMS`` of ``make deploy``).
    """
    ec2 = client("ec2")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]
    cfn = client("cloudformation")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not supported by moto's CloudFormation.*")
        cfn.create_stack(
            StackName=stack_name,
            TemplateBody=TEMPLATE.read_text(encoding="utf-8"),
            Parameters=[
                {"ParameterKey": "VpcId", "ParameterValue": vpc},
                {"ParameterKey": "SubnetIds", "ParameterValue": ",".join(subnets[:2])},
                *({"ParameterKey": key, "ParameterValue": value} for key, value in (parameters or {}).items()),
            ],
            Capabilities=["CAPABILITY_NAMED_IAM"],
        )
    stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


@pytest.fixture
def stack(aws: ClientFactory) -> dict[str, str]:
    return deploy_stack()


def add_gpu_hosts(cluster: str, count: int) -> list[str]:
    """Register ``count`` EC2 instances as container instances of ``cluster`` (what the ECS agent does)."""
    ec2 = client("ec2")
    ecs = client("ecs")
    instances = ec2.run_instances(ImageId=MOTO_AMI, MinCount=count, MaxCount=count, InstanceType="g4dn.xlarge")
    arns = []
    for instance in instances["Instances"]:
        # What the ECS agent sends: the instance identity document from the instance metadata.
        document = json.dumps({
            "instanceId": instance["InstanceId"], "instanceType": instance["InstanceType"],
            "availabilityZone": instance["Placement"]["AvailabilityZone"], "region": REGION,
            "imageId": instance["ImageId"], "privateIp": instance.get("PrivateIpAddress"),
            "accountId": "123456789012", "architecture": "x86_64", "version": "2017-09-30",
        })
        registered = ecs.register_container_instance(cluster=cluster, instanceIdentityDocument=document)
        arns.append(registered["containerInstance"]["containerInstanceArn"])
    return arns


def register_small_task_definition(*, family: str = "am-segm-worker", queue_url: str = "",
                                   environment: dict[str, str] | None = None) -> str:
    """A task definition whose worker fits the small hosts; ``environment``: more AM_* variables."""
    variables = {**({"AM_QUEUE_URL": queue_url} if queue_url else {}), **(environment or {})}
    response = client("ecs").register_task_definition(
        family=family,
        requiresCompatibilities=["EC2"],
        networkMode="bridge",
        containerDefinitions=[{
            "name": "worker",
            "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/am-segm-worker:latest",
            "cpu": TASK_CPU,
            "memory": TASK_MEMORY,
            "essential": True,
            "resourceRequirements": [{"type": "GPU", "value": "1"}],
            "environment": [{"name": name, "value": value} for name, value in variables.items()],
        }],
    )
    return response["taskDefinition"]["taskDefinitionArn"]


@pytest.fixture
def cluster_resources(aws: ClientFactory) -> AwsResources:
    """A cluster with two GPU hosts (room for eight small tasks), the tile queues and buckets."""
    ecs, sqs, s3 = client("ecs"), client("sqs"), client("s3")
    cluster = ecs.create_cluster(clusterName="am-segm")["cluster"]["clusterName"]
    add_gpu_hosts(cluster, 2)
    dlq = sqs.create_queue(QueueName="am-segm-tiles-dlq")["QueueUrl"]
    queue = sqs.create_queue(QueueName="am-segm-tiles")["QueueUrl"]
    task_definition = register_small_task_definition(
        queue_url=queue, environment={"AM_INPUT_BUCKET": "am-segm-input", "AM_OUTPUT_BUCKET": "am-segm-output"})
    for bucket in ("am-segm-input", "am-segm-output"):
        s3.create_bucket(Bucket=bucket)
    return AwsResources(
        queue_url=queue, dead_letter_queue_url=dlq, input_bucket="am-segm-input", output_bucket="am-segm-output",
        model_uri="", cluster=cluster, task_definition=task_definition, service="", capacity_provider="",
        subnets=(), security_groups=(), container_name="worker",
    )


class RecordingEcs:
    """The moto ECS client, with every call recorded; ``injected[call]`` replaces its next responses (or raises)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.injected: dict[str, list[Any]] = {}

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._client, name)
        if not callable(target) or name.startswith(("get_paginator", "_")):
            return target

        def call(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            if self.injected.get(name):
                response = self.injected[name].pop(0)
                if isinstance(response, Exception):
                    raise response
                return response
            return target(**kwargs)

        return call

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for call, kwargs in self.calls if call == name]
