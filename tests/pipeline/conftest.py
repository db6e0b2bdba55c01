"""Fixtures of the pipeline tests that run a job in this process."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from moto import mock_aws

from am.settings import Settings
from am.transport.clients import ClientFactory


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt here, however the test run itself was started (a shell's
    background job starts with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def mocked_clients(fake_aws_credentials: None) -> Iterator[ClientFactory]:
    """Clients of moto's S3 and SQS, in this process, for the default settings' region."""
    with mock_aws():
        yield ClientFactory(region=Settings().region)
