"""Fixtures for the transport tests: an in-process moto S3/SQS and clients from the real factory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from am.transport.clients import ClientFactory
from am.transport.retry import RetryPolicy

FAST_RETRY = RetryPolicy(attempts=4, base_s=0.0, max_wait_s=0.0, sleep=lambda _s: None)


@pytest.fixture
def aws(fake_aws_credentials: None) -> Iterator[ClientFactory]:
    with mock_aws():
        yield ClientFactory(region="us-east-1")


@pytest.fixture
def sqs(aws: ClientFactory) -> Any:
    return aws.sqs()


@pytest.fixture
def s3(aws: ClientFactory) -> Any:
    return aws.s3()
