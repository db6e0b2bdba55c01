"""A job on the aws backend needs a tile queue that dead-letters: without one a bad tile circulates for days."""

from __future__ import annotations

import json

import pytest

from am.backends import open_aws_backend
from am.errors import ConfigError
from am.launchers.aws_stack import AwsResources
from am.settings import Settings
from tests.aws.conftest import client

MODEL = "s3://am-segm-models/models/m.pt"


def _settings() -> Settings:
    return Settings(backend="aws", ecs_cluster="am-segm", ecs_task_definition="am-segm-worker")


def test_a_tile_queue_without_dead_letter_queue_is_refused_before_any_task_starts(
        aws, cluster_resources: AwsResources) -> None:
    refused = r"am-segm-tiles has no dead-letter queue \(no RedrivePolicy\).*never be reported.*RedrivePolicy to"
    with pytest.raises(ConfigError, match=refused), open_aws_backend(_settings(), model=MODEL):
        pass
    assert client("ecs").list_tasks(cluster="am-segm")["taskArns"] == []


def test_the_same_queue_with_a_redrive_policy_is_taken(aws, cluster_resources: AwsResources) -> None:
    sqs = client("sqs")
    dlq_arn = sqs.get_queue_attributes(QueueUrl=cluster_resources.dead_letter_queue_url,
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.set_queue_attributes(QueueUrl=cluster_resources.queue_url, Attributes={
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "4"})})
    client("s3").create_bucket(Bucket="am-segm-models")
    client("s3").put_object(Bucket="am-segm-models", Key="models/m.pt", Body=b"checkpoint")
    with open_aws_backend(_settings(), model=MODEL) as backend:
        assert backend.max_receive_count == 4
