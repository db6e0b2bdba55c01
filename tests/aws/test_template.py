"""The CloudFormation template: cfn-lint clean, deploys on moto, and says what it should.

moto's CloudFormation creates the buckets (with their encryption), the queues (with the redrive
policy), the ECR repository, log group, IAM roles and policies, the ECS cluster, task definition
and service, and the launch template and auto scaling group. It skips, with a warning, the types
it lacks: S3 bucket and SQS queue policies, the ECS capacity provider and its cluster
association, Application Auto Scaling targets and policies, and CloudWatch alarms; it also
ignores a bucket's PublicAccessBlockConfiguration and LifecycleConfiguration. Those are checked
here by reading the template, and by cfn-lint against the CloudFormation resource schemas.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from am.launchers.aws_stack import resolve_aws_resources
from am.settings import Settings
from tests.aws.conftest import REGION, STACK, TEMPLATE, client, load_template

BUCKETS = ("InputBucket", "OutputBucket", "ModelBucket")


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _statements(document: Any) -> list[dict[str, Any]]:
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except json.JSONDecodeError:
            # moto returns inline policies that CloudFormation created as a Python repr, not JSON.
            document = ast.literal_eval(document)
    statements = document["Statement"]
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _grants_everything(statement: dict[str, Any]) -> bool:
    """An Allow of every action (or every action of a service) on every resource."""
    if statement.get("Effect") != "Allow":
        return False
    actions = [str(a) for a in _as_list(statement.get("Action", []))]
    resources = [str(r) for r in _as_list(statement.get("Resource", []))]
    return any(a == "*" or a.endswith(":*") for a in actions) and "*" in resources


def test_cfn_lint_is_clean() -> None:
    cfn_lint = _tool("cfn-lint")
    if cfn_lint is None:
        pytest.skip("cfn-lint is not installed (pip install cfn-lint)")
    result = subprocess.run([cfn_lint, str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stack_deploys_and_outputs_what_the_settings_need(stack: dict[str, str]) -> None:
    for key in ("InputBucket", "OutputBucket", "ModelBucket", "ModelUri", "QueueUrl", "DeadLetterQueueUrl",
                "QueueName", "DeadLetterQueueName", "ResultsQueuePrefix", "Cluster", "TaskDefinition",
                "Service", "ContainerName", "RepositoryUri", "LogGroup", "OperatorPolicyArn", "Region"):
        assert stack.get(key), f"output {key} missing"
    assert stack["QueueName"] == Settings().queue_name
    assert stack["DeadLetterQueueName"] == Settings().dead_letter_queue_name
    assert stack["ResultsQueuePrefix"] == Settings().results_queue_prefix
    assert stack["ModelUri"] == f"s3://{stack['ModelBucket']}/models/am-segm.pt"


def test_tile_queue_has_redrive_policy_and_a_longer_lived_dead_letter_queue(stack: dict[str, str]) -> None:
    sqs = client("sqs")
    queue = sqs.get_queue_attributes(QueueUrl=stack["QueueUrl"], AttributeNames=["All"])["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=stack["DeadLetterQueueUrl"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(queue["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == 3
    assert int(dlq["MessageRetentionPeriod"]) > int(queue["MessageRetentionPeriod"])
    assert int(queue["VisibilityTimeout"]) == Settings().visibility_timeout_s


def test_buckets_are_encrypted(stack: dict[str, str]) -> None:
    s3 = client("s3")
    for key in BUCKETS:
        rules = s3.get_bucket_encryption(Bucket=stack[key])["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms"), key


def test_buckets_block_public_access_require_tls_and_expire_job_data() -> None:
    resources = load_template()["Resources"]
    for key in BUCKETS:
        block = resources[key]["Properties"]["PublicAccessBlockConfiguration"]
        assert block == {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                         "IgnorePublicAcls": True, "RestrictPublicBuckets": True}, key
        policies = [r for r in resources.values()
                    if r["Type"] == "AWS::S3::BucketPolicy" and r["Properties"]["Bucket"] == {"Ref": key}]
        assert len(policies) == 1, f"{key} has no bucket policy"
        [deny] = _statements(policies[0]["Properties"]["PolicyDocument"])
        assert deny["Effect"] == "Deny"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    for key in ("InputBucket", "OutputBucket"):
        [rule] = resources[key]["Properties"]["LifecycleConfiguration"]["Rules"]
        assert rule["Status"] == "Enabled" and "Prefix" not in rule and "Filter" not in rule
        assert rule["ExpirationInDays"] == {"Ref": "JobDataExpirationDays"}


def test_task_definition_asks_for_one_gpu(stack: dict[str, str]) -> None:
    ecs = client("ecs")
    task = ecs.describe_task_definition(taskDefinition=stack["TaskDefinition"])["taskDefinition"]
    [container] = task["containerDefinitions"]
    assert container["name"] == stack["ContainerName"]
    assert {"type": "GPU", "value": "1"} in container["resourceRequirements"]


def test_task_definition_template_runs_on_ec2_with_roles_logs_and_time_to_finish() -> None:
    template = load_template()
    props = template["Resources"]["TaskDefinition"]["Properties"]
    assert props["RequiresCompatibilities"] == ["EC2"]
    assert props["TaskRoleArn"] == {"Fn::GetAtt": ["TaskRole", "Arn"]}
    assert props["ExecutionRoleArn"] == {"Fn::GetAtt": ["TaskExecutionRole", "Arn"]}
    [container] = props["ContainerDefinitions"]
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert template["Parameters"]["StopTimeoutSeconds"]["Default"] >= 60
    assert container["StopTimeout"] == {"Ref": "StopTimeoutSeconds"}
    told = {entry["Name"]: entry["Value"] for entry in container["Environment"]}["AM_STOP_TIMEOUT_S"]
    assert told == {"Ref": "StopTimeoutSeconds"}  # the worker's grace ends inside the same deadline
    names = {entry["Name"] for entry in container["Environment"]}
    assert {"AM_QUEUE_URL", "AM_INPUT_BUCKET", "AM_OUTPUT_BUCKET", "AM_MODEL", "AM_REGION"} <= names
    assert all(name.startswith("AM_") for name in names)


@pytest.mark.parametrize(("parameter", "variable", "default"), [
    ("MaxBatchSeconds", "AM_MAX_BATCH_S", "DEFAULT_MAX_BATCH_S"),
    ("OutagePatienceSeconds", "AM_OUTAGE_PATIENCE_S", "DEFAULT_OUTAGE_PATIENCE_S"),
])
def test_worker_patience_is_a_stack_parameter_with_the_worker_default(parameter: str, variable: str,
                                                                      default: str) -> None:
    """Operators tune how long workers wait for a hung GPU or an S3 outage without editing the template."""
    from am.worker import config

    template = load_template()
    [container] = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    told = {entry["Name"]: entry["Value"] for entry in container["Environment"]}
    assert told[variable] == {"Ref": parameter}
    assert template["Parameters"][parameter]["Default"] == getattr(config, default)
    grouped = [name for group in template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
               for name in group["Parameters"]]
    assert parameter in grouped
    config.WorkerConfig.from_environ({"AM_QUEUE_URL": "q", "AM_INPUT_BUCKET": "i", "AM_OUTPUT_BUCKET": "o",
                                      variable: str(template["Parameters"][parameter]["MinValue"])})


def test_no_iam_policy_grants_every_action_on_every_resource(stack: dict[str, str]) -> None:
    iam = client("iam")
    documents = []
    for role in iam.list_roles()["Roles"]:
        if STACK not in role["RoleName"]:
            continue
        for name in iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]:
            documents.append(iam.get_role_policy(RoleName=role["RoleName"], PolicyName=name)["PolicyDocument"])
    policy = iam.get_policy(PolicyArn=stack["OperatorPolicyArn"])["Policy"]
    documents.append(iam.get_policy_version(PolicyArn=policy["Arn"],
                                            VersionId=policy["DefaultVersionId"])["PolicyVersion"]["Document"])
    assert len(documents) >= 3
    for document in documents:
        for statement in _statements(document):
            assert not _grants_everything(statement), statement
    # The template itself, including what moto does not create.
    for resource in load_template()["Resources"].values():
        for policy in resource.get("Properties", {}).get("Policies", []):
            for statement in _statements(policy["PolicyDocument"]):
                assert not _grants_everything(statement), statement


def test_listing_the_clusters_tasks_is_granted_on_every_resource_of_the_cluster() -> None:
    # am.scale status/drain (and so make undeploy) list the cluster's tasks without naming a container
    # instance; IAM authorises that call against "*", so a container-instance ARN denied it.
    document = load_template()["Resources"]["OperatorPolicy"]["Properties"]["PolicyDocument"]
    (statement,) = [s for s in _statements(document) if "ecs:ListTasks" in _as_list(s["Action"])]
    assert statement["Resource"] == "*"
    assert list(statement["Condition"]["ArnEquals"]) == ["ecs:cluster"]


def test_task_role_reads_input_writes_output_reads_models_and_uses_its_queues(stack: dict[str, str]) -> None:
    iam = client("iam")
    [role] = [r for r in iam.list_roles()["Roles"] if "TaskRole" in r["RoleName"] and STACK in r["RoleName"]]
    [name] = iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]
    statements = _statements(iam.get_role_policy(RoleName=role["RoleName"], PolicyName=name)["PolicyDocument"])
    grants = {(action, resource) for s in statements for action in _as_list(s["Action"])
              for resource in _as_list(s["Resource"])}
    s3_grants = {(a, r.split(":::")[-1]) for a, r in grants if a.startswith("s3:")}
    assert s3_grants == {
        ("s3:GetObject", f"{stack['InputBucket']}/*"),
        ("s3:PutObject", f"{stack['OutputBucket']}/*"),
        ("s3:GetObject", f"{stack['ModelBucket']}/models/*"),
        # HeadBucket: a worker checks at start that its buckets exist.
        ("s3:ListBucket", stack["InputBucket"]),
        ("s3:ListBucket", stack["OutputBucket"]),
    }
    sqs_resources = {r for a, r in grants if a.startswith("sqs:")}
    queue_arn, dead_letter_arn = (client("sqs").get_queue_attributes(
        QueueUrl=stack[url], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for url in ("QueueUrl", "DeadLetterQueueUrl"))
    assert sqs_resources == {queue_arn, dead_letter_arn,
                             f"arn:aws:sqs:{REGION}:123456789012:{stack['ResultsQueuePrefix']}-*"}
    assert ("sqs:SendMessage", queue_arn) not in grants
    # Workers move a tile's last failure to the dead-letter queue; they never read or delete there.
    assert {a for a, r in grants if r == dead_letter_arn} == {"sqs:SendMessage", "sqs:GetQueueUrl"}
    assert all(a.split(":")[0] in ("s3", "sqs") for a, _ in grants)


def test_gpu_capacity_scales_from_zero_on_the_ecs_gpu_ami() -> None:
    template = load_template()
    resources = template["Resources"]
    assert "/ecs/optimized-ami/" in template["Parameters"]["GpuAmiId"]["Default"]
    assert "/gpu/" in template["Parameters"]["GpuAmiId"]["Default"]
    assert template["Parameters"]["GpuAmiId"]["Type"].startswith("AWS::SSM::Parameter::Value")
    launch = resources["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert launch["ImageId"] == {"Ref": "GpuAmiId"}
    assert "ECS_ENABLE_GPU_SUPPORT=true" in launch["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert resources["AutoScalingGroup"]["Properties"]["MinSize"] == "0"
    provider = resources["CapacityProvider"]["Properties"]["AutoScalingGroupProvider"]
    assert provider["ManagedScaling"]["Status"] == "ENABLED"
    assert provider["AutoScalingGroupArn"] == {"Ref": "AutoScalingGroup"}
    service = resources["Service"]["Properties"]
    assert service["DesiredCount"] == {"Fn::If": ["CreatingService", 0, {"Ref": "AWS::NoValue"}]}
    assert service["CapacityProviderStrategy"][0]["CapacityProvider"] == {"Ref": "CapacityProvider"}


def _service_properties_when(service_exists: str) -> dict[str, Any]:
    """The worker service's properties as CloudFormation sends them, with its conditions decided."""
    template = load_template()
    [(name, condition)] = template["Conditions"].items()
    assert condition == {"Fn::Equals": [{"Ref": "ServiceExists"}, "false"]}
    holds = service_exists == "false"
    properties = {}
    for key, value in template["Resources"]["Service"]["Properties"].items():
        if isinstance(value, dict) and "Fn::If" in value:
            [which, when_true, when_false] = value["Fn::If"]
            assert which == name
            value = when_true if holds else when_false
        if value != {"Ref": "AWS::NoValue"}:
            properties[key] = value
    return properties


def test_service_count_is_set_only_when_the_service_is_created() -> None:
    """CloudFormation sends every property of the service it updates: a count would stop running tasks.

    Updating a service without a desired count keeps the count auto scaling set; ``make deploy``
    passes ``ServiceExists=true`` once the service exists (``tests/aws/test_deploy.py``).
    """
    assert load_template()["Parameters"]["ServiceExists"]["Default"] == "false"
    assert _service_properties_when("false")["DesiredCount"] == 0
    updated = _service_properties_when("true")
    assert "DesiredCount" not in updated
    assert updated["TaskDefinition"] == {"Ref": "TaskDefinition"}


def test_instances_pull_the_image_at_every_task_start() -> None:
    """The image tag is mutable (`make push` overwrites latest): a cached copy would keep old workers running."""
    launch = load_template()["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    config = launch["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert "ECS_IMAGE_PULL_BEHAVIOR=default" in config
    assert "prefer-cached" not in config and "ECS_IMAGE_PULL_BEHAVIOR=once" not in config


def test_service_scales_on_backlog_per_task_down_to_zero() -> None:
    resources = load_template()["Resources"]
    target = resources["ServiceScalableTarget"]["Properties"]
    assert target["MinCapacity"] == 0 and target["ScalableDimension"] == "ecs:service:DesiredCount"
    tracking = resources["BacklogPerTaskPolicy"]["Properties"]
    assert tracking["PolicyType"] == "TargetTrackingScaling"
    metrics = tracking["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]["Metrics"]
    [returned] = [m for m in metrics if m["ReturnData"]]
    assert "visible" in returned["Expression"] and "tasks" in returned["Expression"]
    queue_metrics = {m["MetricStat"]["Metric"]["MetricName"] for m in metrics if "MetricStat" in m}
    assert {"ApproximateNumberOfMessagesVisible", "RunningTaskCount"} <= queue_metrics
    wake = resources["WakeFromZeroAlarm"]["Properties"]
    assert wake["AlarmActions"] == [{"Ref": "WakeFromZeroPolicy"}]


def test_the_wake_from_zero_alarm_ends_once_the_service_wants_a_task() -> None:
    # Auto scaling repeats an alarm's action every minute while it stays in ALARM; GPU instances boot for
    # minutes with no task running. Keyed on running tasks, the alarm would set the count back to 1
    # every minute, over what backlog tracking raised it to.
    wake = load_template()["Resources"]["WakeFromZeroAlarm"]["Properties"]
    names = {m["Id"]: m["MetricStat"]["Metric"]["MetricName"] for m in wake["Metrics"] if "MetricStat" in m}
    assert names == {"visible": "ApproximateNumberOfMessagesVisible", "desired": "DesiredTaskCount"}
    [returned] = [m for m in wake["Metrics"] if m["ReturnData"]]
    assert "FILL(desired, 0) == 0" in returned["Expression"]


def test_a_task_definition_an_update_replaces_stays_usable_by_the_running_job(stack: dict[str, str]) -> None:
    # A job starts workers from the revision it read at its start, also after `make deploy` replaced it.
    task_definition = load_template()["Resources"]["TaskDefinition"]
    assert task_definition["UpdateReplacePolicy"] == "Retain"
    assert task_definition["DeletionPolicy"] == "Delete"
    assert task_definition["Properties"]["Family"] == {"Fn::Sub": "${AWS::StackName}-worker"}
    assert stack["TaskDefinition"].split("/")[-1].startswith(f"{STACK}-worker:")


def test_resources_resolve_from_the_stack_outputs(stack: dict[str, str], aws) -> None:
    settings = Settings(backend="aws", stack_name=STACK)
    resources = resolve_aws_resources(settings, cloudformation_client=aws.cloudformation(), sqs_client=aws.sqs())
    assert resources.queue_url == stack["QueueUrl"]
    assert resources.dead_letter_queue_url == stack["DeadLetterQueueUrl"]
    assert (resources.input_bucket, resources.output_bucket) == (stack["InputBucket"], stack["OutputBucket"])
    assert resources.cluster == stack["Cluster"]
    assert resources.task_definition == stack["TaskDefinition"]
    assert resources.service == stack["Service"]
    assert resources.model_uri == stack["ModelUri"]
    assert resources.container_name == "worker"
