"""Fixtures for the fault, bad-input and security tests: the tiny model, its predictor, a moto server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer


@pytest.fixture(scope="session")
def predictor(tiny_model: Path):
    """The tiny model in this process, to compute what an undisturbed run must produce."""
    from am.model.predict import Predictor

    return Predictor.from_checkpoint(tiny_model, device="cpu", threads=1)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """An S3/SQS endpoint owned by the test (not the orchestrator), so it can be inspected after a run."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
