"""Local workers of the embedded endpoint inherit none of the user's AWS set-up; those of a configured one keep it.

Only the key variables were dropped: a profile, a config file with a credential process, a web identity
or a container's credentials reached every worker, which then failed (or asked STS) as its clients were made.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import am.launchers.local
from am.backends import open_local_backend
from am.endpoint import EmbeddedEndpoint
from am.settings import Settings
from am.transport.clients import EMBEDDED_ENDPOINT_VARIABLE, EMBEDDED_REGION, ENDPOINT_TOKEN_VARIABLE

# The user's set-up that once reached the workers, all broken: none of it may matter on the embedded endpoint.
AWS_SET_UP = {
    "AWS_PROFILE": "nosuch",
    "AWS_DEFAULT_PROFILE": "nosuch",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_ROLE_ARN": "arn:aws:iam::111122223333:role/ci",
    "AWS_ROLE_SESSION_NAME": "ci",
    "AWS_WEB_IDENTITY_TOKEN_FILE": "/nonexistent/token",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/creds",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/creds",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN": "container-token",
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEYID0000004",
    "AWS_SECRET_ACCESS_KEY": "fake-secret",
    "AWS_REGION": "garage",
    "AWS_DEFAULT_REGION": "localhost",
}
DUMP_ENVIRONMENT = """\
#!{python}
import json, os
from pathlib import Path
Path(os.environ["DUMP_TO"]).write_text(json.dumps(dict(os.environ)))
"""


def _worker_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings,
                        base: dict[str, str]) -> dict[str, str]:
    """The environment a worker of the local backend starts with, for ``settings`` and an orchestrator's ``base``."""
    script = tmp_path / "fake-python"
    script.write_text(DUMP_ENVIRONMENT.format(python=sys.executable))
    script.chmod(0o755)
    dump = tmp_path / "environment.json"
    real = am.launchers.local.LocalLauncher

    class DumpingLauncher(real):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(python=str(script), **kwargs)

    monkeypatch.setattr(am.launchers.local, "LocalLauncher", DumpingLauncher)
    with open_local_backend(settings, model="m.pt", log_dir=tmp_path / "logs",
                            base_environment={**base, "DUMP_TO": str(dump)}) as backend:
        backend.launcher.start(1, backend.worker_environment)
        deadline = time.monotonic() + 60
        while not dump.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert dump.exists(), "the worker did not start"
    return json.loads(dump.read_text())


@pytest.fixture
def aws_config(tmp_path: Path) -> Path:
    config = tmp_path / "aws-config"
    config.write_text("[default]\ncredential_process = /bin/false\n[profile nosuch-either]\nregion = garage\n")
    return config


def test_workers_of_the_embedded_endpoint_inherit_nothing_of_the_users_aws_set_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws_config: Path) -> None:
    base = {**os.environ, **AWS_SET_UP, "AWS_CONFIG_FILE": str(aws_config),
            EMBEDDED_ENDPOINT_VARIABLE: "http://127.0.0.1:9", ENDPOINT_TOKEN_VARIABLE: "stray"}
    # The orchestrator's own clients run with the same set-up: its buckets and queues are made in "garage".
    for name, value in AWS_SET_UP.items():
        if name not in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):  # read by moto in-process; tested with the endpoint
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_config))
    env = _worker_environment(tmp_path, monkeypatch, Settings(workers=1, region="garage"), base)
    assert [name for name in env if name.startswith("AWS_")] == []
    assert env[EMBEDDED_ENDPOINT_VARIABLE] == env["AM_ENDPOINT_URL"] != "http://127.0.0.1:9"
    assert env["AM_REGION"] == EMBEDDED_REGION
    assert len(env[ENDPOINT_TOKEN_VARIABLE]) >= 32, "the workers cannot pass the endpoint's token check"


def test_workers_of_a_configured_endpoint_keep_the_users_aws_set_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    aws_config: Path) -> None:
    base = {**os.environ, **AWS_SET_UP, "AWS_CONFIG_FILE": str(aws_config),
            EMBEDDED_ENDPOINT_VARIABLE: "http://127.0.0.1:9", ENDPOINT_TOKEN_VARIABLE: "stray"}
    # Stands in for a MinIO of the user's, which may check keys.
    with EmbeddedEndpoint(require_token=False) as configured:
        url = configured.url
        env = _worker_environment(tmp_path, monkeypatch, Settings(workers=1, endpoint_url=url, region="eu-west-1"),
                                  base)
    assert {name: env.get(name) for name in AWS_SET_UP} == AWS_SET_UP
    assert env["AWS_CONFIG_FILE"] == str(aws_config)
    assert EMBEDDED_ENDPOINT_VARIABLE not in env, "a stray variable would isolate its clients from the keys it needs"
    assert ENDPOINT_TOKEN_VARIABLE not in env
    assert env["AM_ENDPOINT_URL"] == url and env["AM_REGION"] == "eu-west-1"
