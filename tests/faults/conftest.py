"""Fixtures for the fault, bad-input and security tests: the tiny model, its predictor, a moto server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from am.endpoint import EmbeddedEndpoint


@pytest.fixture(scope="session")
def predictor(tiny_model: Path):
    """The tiny model in this process, to compute what an undisturbed run must produce."""
    from am.model.predict import Predictor

    return Predictor.from_checkpoint(tiny_model, device="cpu", threads=1)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """An S3/SQS endpoint owned by the test (not the orchestrator), so it can be inspected after a run."""
    with EmbeddedEndpoint() as endpoint:
        yield endpoint.url
