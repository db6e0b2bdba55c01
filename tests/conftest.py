"""Shared fixtures: the real samples folder, a tiny model, and small generated datasets."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from faults.harness import lattice_image

from tests.environment import is_product_variable
from tests.real_samples import real_samples

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The AM_* and AWS_* variables of the shell that started pytest, noted before any fixture sets its own.
INHERITED_PRODUCT_VARIABLES = sorted(name for name in os.environ if is_product_variable(name))


FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session", autouse=True)
def private_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The run's temporary files, the workers' included, under pytest's own folder, which pytest rotates.

    Worker model caches and the logs of runs whose tiles failed stay behind on purpose; in the
    system temp dir they would pile up run after run.
    """
    folder = tmp_path_factory.mktemp("tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(folder))
        patch.setattr(tempfile, "tempdir", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def no_inherited_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests do not see the developer's AM_* / AWS_* variables (``AM_CONFIG``, ``AWS_PROFILE``, ...).

    Only the variables inherited from the shell go: autouse, this runs before the fixtures a test asks
    for, such as ``fake_aws_credentials``, set theirs. Subprocesses get the same from ``clean_env``.
    """
    for name in INHERITED_PRODUCT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """Each test leaves the root logger as it found it.

    A command's ``main`` installs a handler on the ``sys.stderr`` of its moment, which under pytest is
    a capture stream closed after that test; a later test that logs would write to it and print
    "Logging error ... I/O operation on closed file".
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials moto accepts and no AWS account does, and no profile: a test cannot reach a real account."""
    for name, value in FAKE_AWS_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="session")
def real_data() -> Path:
    return real_samples()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small, fast, untrained checkpoint: enough to drive the protocol, not to judge masks."""
    from am.model.build import write_test_checkpoint

    return write_test_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", seed=0)


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    """Two groups: an 8-bit PNG and a 16-bit TIFF of different, odd sizes."""
    import tifffile

    root = tmp_path / "dataset"
    (root / "source" / "g1").mkdir(parents=True)
    (root / "source" / "g2").mkdir(parents=True)
    cv2.imwrite(str(root / "source" / "g1" / "image.png"), lattice_image(301, 517, seed=1))
    tifffile.imwrite(root / "source" / "g2" / "image.tif",
                     lattice_image(283, 245, seed=2).astype(np.uint16) * 200)
    return root
