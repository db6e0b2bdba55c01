"""Segment every image under an S3 prefix with a SageMaker batch transform job, and wait for it.

Creates (or reuses) a SageMaker model from the am-segm serving image (Dockerfile.serve) and a
model.tar.gz holding model.pt, then a transform job that sends each object under the input
prefix, whole, to the container's /invocations, and polls the job until it ends. SageMaker
writes each mask to ``<output prefix>/<input key relative to the input prefix>.out`` (a PNG).
Input objects may be whole images (up to SageMaker's 100 MB per record) or tiles.

    python examples/sagemaker_batch_transform.py \\
        --image-uri 123456789012.dkr.ecr.eu-west-1.amazonaws.com/am-segm-serve:latest \\
        --model-data s3://my-bucket/models/model.tar.gz \\
        --role-arn arn:aws:iam::123456789012:role/AmSegmSageMakerRole \\
        --input s3://my-bucket/batch/input/ --output s3://my-bucket/batch/output/ \\
        --instance-type ml.g4dn.xlarge

Credentials and region come from boto3's usual chain (environment, profile, instance role).
Exit code 0 when the job completed, 1 when it failed, stopped or ran past --timeout-s.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from am.cli import EXIT_OK, configure_logging, run_main
from am.errors import AmError, ConfigError, JobFailed, JobTimeout
from am.launchers.aws_stack import aws_message

log = logging.getLogger("sagemaker_batch_transform")

FINAL_STATUSES = ("Completed", "Failed", "Stopped")
# SageMaker's limits on one record and on job names.
MAX_PAYLOAD_MB = 100
MAX_NAME_LENGTH = 63


def default_name(prefix: str = "am-segm") -> str:
    """A unique, valid SageMaker name: letters, digits and hyphens, at most 63 characters."""
    return f"{prefix}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"[:MAX_NAME_LENGTH]


def check_s3_uri(uri: str, *, option: str) -> str:
    if not uri.startswith("s3://") or len(uri) <= len("s3://") or uri[len("s3://"):].startswith("/"):
        raise ConfigError(f"{option} {uri!r} is not an S3 URI; give it as s3://BUCKET/PREFIX")
    return uri


def ensure_model(client: Any, *, name: str, image_uri: str, model_data: str, role_arn: str) -> str:
    """Create the SageMaker model unless one of that name exists; returns its name."""
    try:
        client.describe_model(ModelName=name)
    except ClientError as exc:
        # SageMaker answers a missing model with a ValidationException ("Could not find model").
        if exc.response.get("Error", {}).get("Code") != "ValidationException":
            raise
    else:
        log.info("model %s already exists; reusing it", name)
        return name
    client.create_model(
        ModelName=name,
        PrimaryContainer={"Image": image_uri, "ModelDataUrl": model_data, "Mode": "SingleModel"},
        ExecutionRoleArn=role_arn,
    )
    log.info("created model %s from %s with %s", name, image_uri, model_data)
    return name


def create_transform_job(
    client: Any,
    *,
    job_name: str,
    model_name: str,
    input_uri: str,
    output_uri: str,
    instance_type: str,
    instance_count: int = 1,
    content_type: str = "application/x-image",
    max_payload_mb: int = MAX_PAYLOAD_MB,
) -> str:
    """One record per S3 object (SplitType None), one request at a time per instance; returns the job ARN."""
    response = client.create_transform_job(
        TransformJobName=job_name,
        ModelName=model_name,
        MaxConcurrentTransforms=1,
        MaxPayloadInMB=max_payload_mb,
        BatchStrategy="SingleRecord",
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": content_type,
            "CompressionType": "None",
            "SplitType": "None",
        },
        TransformOutput={"S3OutputPath": output_uri, "Accept": "image/png", "AssembleWith": "None"},
        TransformResources={"InstanceType": instance_type, "InstanceCount": instance_count},
    )
    log.info("started transform job %s: %s -> %s on %d x %s", job_name, input_uri, output_uri, instance_count,
             instance_type)
    return str(response["TransformJobArn"])


def wait_for_job(
    client: Any,
    job_name: str,
    *,
    timeout_s: float,
    poll_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll describe_transform_job until the job ends; JobFailed if it did not complete, JobTimeout after timeout_s."""
    deadline = clock() + timeout_s
    last = None
    while True:
        job = client.describe_transform_job(TransformJobName=job_name)
        status = job["TransformJobStatus"]
        if status != last:
            log.info("transform job %s: %s", job_name, status)
            last = status
        if status == "Completed":
            return dict(job)
        if status in FINAL_STATUSES:
            reason = job.get("FailureReason") or "no reason given"
            raise JobFailed(f"transform job {job_name} ended {status}: {reason}; see its logs in CloudWatch "
                            "(/aws/sagemaker/TransformJobs)")
        if clock() >= deadline:
            raise JobTimeout(f"transform job {job_name} is still {status} after {timeout_s:.0f} s; it keeps running: "
                             f"stop it with `aws sagemaker stop-transform-job --transform-job-name {job_name}` "
                             "or wait longer with a larger --timeout-s")
        sleep(poll_s)


def build_parser() -> argparse.ArgumentParser:
    # Each help text names its own default: argparse's ArgumentDefaultsHelpFormatter would add
    # "(default: None)" to the required options and to those whose default is made at run time.
    parser = argparse.ArgumentParser(
        prog="python examples/sagemaker_batch_transform.py",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument("--image-uri", required=True, help="ECR URI of the image built from Dockerfile.serve")
    parser.add_argument("--model-data", required=True, help="s3:// URI of model.tar.gz holding model.pt")
    parser.add_argument("--role-arn", required=True, help="IAM role SageMaker assumes to read the model and data")
    parser.add_argument("--input", required=True, help="s3:// prefix holding the images or tiles to segment")
    parser.add_argument("--output", required=True, help="s3:// prefix for the masks (<key>.out, PNG)")
    parser.add_argument("--instance-type", default="ml.g4dn.xlarge",
                        help="transform instance type (default ml.g4dn.xlarge)")
    parser.add_argument("--instance-count", type=int, default=1, help="transform instances (default 1)")
    parser.add_argument("--content-type", default="application/x-image",
                        choices=("application/x-image", "image/png", "image/tiff"),
                        help="Content-Type sent with each record (default application/x-image)")
    parser.add_argument("--max-payload-mb", type=int, default=MAX_PAYLOAD_MB,
                        help=f"largest record in MB (default and max {MAX_PAYLOAD_MB})")
    parser.add_argument("--model-name", default=None, help="SageMaker model name (default: am-segm-<time>)")
    parser.add_argument("--job-name", default=None, help="transform job name (default: am-segm-<time>)")
    parser.add_argument("--region", default=None, help="AWS region (default: boto3's configured region)")
    parser.add_argument("--timeout-s", type=float, default=6 * 3600,
                        help="stop waiting after this many seconds (default 21600, 6 hours)")
    parser.add_argument("--poll-s", type=float, default=30.0, help="seconds between status checks (default 30)")
    parser.add_argument("--no-wait", action="store_true", help="start the job and exit without waiting")
    return parser


def describe_aws_error(exc: BotoCoreError | ClientError) -> str:
    """One line for an AWS failure: what went wrong and what to do, where botocore would print a
    traceback (no region, no credentials, a request SageMaker refused, no connection)."""
    if isinstance(exc, NoRegionError):
        return ("no AWS region is configured: give --region, or set AWS_REGION (or a region in the profile, "
                "~/.aws/config)")
    if isinstance(exc, NoCredentialsError):
        return ("no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run "
                "where an instance or task role provides them")
    if isinstance(exc, ClientError):
        return (f"SageMaker refused {exc.operation_name}: {aws_message(exc)}; check the values given and that "
                "these credentials may call it (the IAM policy of the user or role)")
    return f"cannot use SageMaker: {exc}; check the network, the region and the AWS configuration"


class SageMakerError(AmError):
    """AWS failed or refused a request; the message says which and what to do."""


def main(argv: list[str] | None = None, *, client: Any = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.instance_count < 1:
        parser.error(f"--instance-count must be at least 1, got {args.instance_count}")
    if not 1 <= args.max_payload_mb <= MAX_PAYLOAD_MB:
        parser.error(f"--max-payload-mb must be between 1 and {MAX_PAYLOAD_MB}, got {args.max_payload_mb}")
    for option, value in (("--timeout-s", args.timeout_s), ("--poll-s", args.poll_s)):
        if not (math.isfinite(value) and value > 0):  # nan passes a <= 0 check
            parser.error(f"{option} {value}: give a finite number of seconds > 0")

    def run() -> int:
        import boto3

        try:
            sagemaker = client or boto3.client("sagemaker", region_name=args.region)
            input_uri = check_s3_uri(args.input, option="--input")
            output_uri = check_s3_uri(args.output, option="--output")
            model_data = check_s3_uri(args.model_data, option="--model-data")
            model_name = ensure_model(sagemaker, name=args.model_name or default_name(), image_uri=args.image_uri,
                                      model_data=model_data, role_arn=args.role_arn)
            job_name = args.job_name or default_name()
            arn = create_transform_job(sagemaker, job_name=job_name, model_name=model_name, input_uri=input_uri,
                                       output_uri=output_uri, instance_type=args.instance_type,
                                       instance_count=args.instance_count, content_type=args.content_type,
                                       max_payload_mb=args.max_payload_mb)
            print(f"transform job {job_name} ({arn})")
            if args.no_wait:
                return EXIT_OK
            started = time.monotonic()
            job = wait_for_job(sagemaker, job_name, timeout_s=args.timeout_s, poll_s=args.poll_s)
        except (BotoCoreError, ClientError) as exc:
            log.debug("traceback of the AWS error", exc_info=True)
            raise SageMakerError(describe_aws_error(exc)) from exc
        print(f"transform job {job_name}: {job['TransformJobStatus']} after {time.monotonic() - started:.0f} s; "
              f"masks under {output_uri}")
        return EXIT_OK

    configure_logging("INFO")
    return run_main(run, name="sagemaker_batch_transform")


if __name__ == "__main__":
    sys.exit(main())
