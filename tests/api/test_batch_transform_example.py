"""examples/sagemaker_batch_transform.py against moto's SageMaker, and its waiting logic against a fake.

moto records models and transform jobs and describes them back, and reports a job Completed at
once; it runs no container and writes no output. So moto checks the requests the script makes,
and a fake with describe_transform_job checks how it waits for other outcomes.
"""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from am.errors import JobFailed, JobTimeout
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
ROLE = "arn:aws:iam::123456789012:role/AmSegmSageMakerRole"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/am-segm-serve:latest"


@pytest.fixture(scope="module")
def example():
    return load_script(REPO / "examples" / "sagemaker_batch_transform.py")


@pytest.fixture
def aws(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.client("sagemaker", region_name="eu-west-1")


def args(**overrides: str) -> list[str]:
    values = {"--image-uri": IMAGE, "--model-data": "s3://am-bucket/models/model.tar.gz", "--role-arn": ROLE,
              "--input": "s3://am-bucket/batch/input/", "--output": "s3://am-bucket/batch/output/",
              "--instance-type": "ml.g4dn.xlarge", "--instance-count": "2", "--model-name": "am-segm-test",
              "--job-name": "am-segm-job-1", "--poll-s": "0.01", "--timeout-s": "5", **overrides}
    return [item for pair in values.items() for item in pair]


def test_creates_the_model_and_the_transform_job_and_waits_for_completion(example, aws, capsys):
    assert example.main(args(), client=aws) == 0
    model = aws.describe_model(ModelName="am-segm-test")
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://am-bucket/models/model.tar.gz"
    assert model["ExecutionRoleArn"] == ROLE
    job = aws.describe_transform_job(TransformJobName="am-segm-job-1")
    assert job["ModelName"] == "am-segm-test"
    assert job["TransformInput"]["DataSource"]["S3DataSource"] == {"S3DataType": "S3Prefix",
                                                                   "S3Uri": "s3://am-bucket/batch/input/"}
    assert job["TransformInput"]["ContentType"] == "application/x-image"
    assert job["TransformInput"]["SplitType"] == "None"
    assert job["TransformOutput"]["S3OutputPath"] == "s3://am-bucket/batch/output/"
    assert job["TransformResources"] == {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 2}
    assert job["BatchStrategy"] == "SingleRecord" and job["MaxPayloadInMB"] == 100
    out = capsys.readouterr().out
    assert "am-segm-job-1: Completed" in out


def test_a_second_job_reuses_the_existing_model(example, aws):
    assert example.main(args(), client=aws) == 0
    assert example.main(args(**{"--job-name": "am-segm-job-2"}), client=aws) == 0
    assert len(aws.list_models()["Models"]) == 1
    assert {j["TransformJobName"] for j in aws.list_transform_jobs()["TransformJobSummaries"]} == \
        {"am-segm-job-1", "am-segm-job-2"}


def test_bad_s3_uri_is_an_error_exit_before_anything_is_created(example, aws):
    assert example.main(args(**{"--input": "batch/input"}), client=aws) == 1
    assert aws.list_models()["Models"] == []


class FakeSageMaker:
    """describe_transform_job answers from a script of statuses (the last one repeats)."""

    def __init__(self, statuses: list[str], reason: str = "") -> None:
        self.statuses = statuses
        self.reason = reason
        self.calls = 0

    def describe_transform_job(self, TransformJobName: str) -> dict:
        status = self.statuses[min(self.calls, len(self.statuses) - 1)]
        self.calls += 1
        return {"TransformJobName": TransformJobName, "TransformJobStatus": status, "FailureReason": self.reason}


def test_wait_returns_after_in_progress_polls(example):
    fake = FakeSageMaker(["InProgress", "InProgress", "Completed"])
    sleeps = []
    job = example.wait_for_job(fake, "j", timeout_s=100, poll_s=7, sleep=sleeps.append, clock=lambda: 0.0)
    assert job["TransformJobStatus"] == "Completed" and sleeps == [7, 7]


def test_wait_reports_a_failed_job_with_its_reason(example):
    with pytest.raises(JobFailed, match="ended Failed: ClientError: bad image"):
        example.wait_for_job(FakeSageMaker(["InProgress", "Failed"], "ClientError: bad image"), "j",
                             timeout_s=100, poll_s=1, sleep=lambda s: None, clock=lambda: 0.0)


def test_wait_gives_up_after_the_timeout_and_says_how_to_stop_the_job(example):
    now = iter(range(0, 1000, 10))
    with pytest.raises(JobTimeout, match="stop-transform-job --transform-job-name j"):
        example.wait_for_job(FakeSageMaker(["InProgress"]), "j", timeout_s=30, poll_s=10, sleep=lambda s: None,
                             clock=lambda: float(next(now)))
