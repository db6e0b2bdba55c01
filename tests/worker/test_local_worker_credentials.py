"""Which credentials local workers get: none for the embedded endpoint, the orchestrator's for a configured one.

Only the key variables were dropped once: a profile, a config file with a credential process, a web identity
or a container's credentials reached every worker of the embedded endpoint, which then failed (or asked STS)
as its clients were made. Those workers now inherit none of the user's AWS set-up.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import am.launchers.local
from am.backends import open_local_backend
from am.endpoint import EmbeddedEndpoint
from am.settings import Settings
from am.transport.clients import EMBEDDED_ENDPOINT_VARIABLE, EMBEDDED_REGION, ENDPOINT_TOKEN_VARIABLE
from tests.waiting import wait_until

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAFAKEKEYID0000003", "AWS_SECRET_ACCESS_KEY": "fake-secret",
               "AWS_SESSION_TOKEN": "fake-token"}
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
# Stands in for `python -m am.worker`: writes the environment it was started with, then exits.
DUMP_ENVIRONMENT = """\
#!{python}
import json, os
from pathlib import Path
Path(os.environ["DUMP_TO"]).write_text(json.dumps(dict(os.environ)))
"""


def _worker_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings,
                        base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a worker of the local backend starts with, for ``settings`` and the orchestrator's
    environment ``base`` (by default this process's, with :data:`CREDENTIALS` set)."""
    script = tmp_path / "fake-python"
    script.write_text(DUMP_ENVIRONMENT.format(python=sys.executable))
    script.chmod(0o755)
    dump = tmp_path / "environment.json"
    real = am.launchers.local.LocalLauncher

    class DumpingLauncher(real):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(python=str(script), **kwargs)

    monkeypatch.setattr(am.launchers.local, "LocalLauncher", DumpingLauncher)
    if base is None:
        for name, value in CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        base = os.environ
    with open_local_backend(settings, model="m.pt", log_dir=tmp_path / "logs",
                            base_environment={**base, "DUMP_TO": str(dump)}) as backend:
        backend.launcher.start(1, backend.worker_environment)
        wait_until(dump.exists, timeout=60, what="the worker's start")
    return json.loads(dump.read_text())


def test_workers_of_the_embedded_endpoint_get_no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _worker_environment(tmp_path, monkeypatch, Settings(workers=1))
    assert not set(CREDENTIALS) & set(env)
    assert env["AM_ENDPOINT_URL"].startswith("http://127.0.0.1:")


def test_workers_of_a_configured_endpoint_sign_as_the_orchestrator_does(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with EmbeddedEndpoint() as configured:
        url = configured.url
        env = _worker_environment(tmp_path, monkeypatch, Settings(workers=1, endpoint_url=url))
    assert {name: env.get(name) for name in CREDENTIALS} == CREDENTIALS
    assert env["AM_ENDPOINT_URL"] == url


def test_keep_job_data_on_the_embedded_endpoint_is_said_to_keep_nothing(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    # Its objects live in the endpoint's process, which stops with the run: the setting cannot keep them.
    with open_local_backend(Settings(workers=1, keep_job_data=True), model="m.pt", log_dir=tmp_path / "logs",
                            base_environment={}):
        pass
    assert any(r.levelname == "WARNING" and "keep_job_data has no effect on the embedded endpoint" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with EmbeddedEndpoint() as lasting, open_local_backend(
            Settings(workers=1, keep_job_data=True, endpoint_url=lasting.url), model="m.pt",
            log_dir=tmp_path / "logs", base_environment={}):
        pass
    assert not any("keep_job_data" in r.getMessage() for r in caplog.records)


def test_worker_variables_given_to_the_orchestrator_are_replaced_with_a_warning_naming_what_to_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """AM_THREADS and AM_STOP_TIMEOUT_S are am.worker's; set for am.pipeline they were dropped without a word."""
    monkeypatch.setenv("AM_THREADS", "8")
    monkeypatch.setenv("AM_STOP_TIMEOUT_S", "600")
    with caplog.at_level("WARNING"):
        env = _worker_environment(tmp_path, monkeypatch, Settings(workers=1, worker_threads=1))
    assert env["AM_THREADS"] == "1" and env["AM_STOP_TIMEOUT_S"] == str(am.launchers.local.STOP_TIMEOUT_S)
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert ("AM_THREADS = '8' does not reach the local workers: they run with 1 torch thread(s) each, from the "
            "worker_threads setting; set worker_threads (AM_WORKER_THREADS") in said, said
    assert "AM_STOP_TIMEOUT_S = '600' does not reach the local workers: this launcher stops them 40 s" in said, said


def test_every_variable_the_local_backend_sets_is_left_out_of_the_check_of_inherited_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """check_local_worker_environment must not refuse a value that the backend replaces for the workers."""
    from am.backends import check_local_worker_environment

    env = _worker_environment(tmp_path, monkeypatch, Settings(workers=1))
    set_for_workers = {name for name in env if name.startswith("AM_") and env[name] != os.environ.get(name)}
    assert {"AM_QUEUE_URL", "AM_THREADS", "AM_STOP_TIMEOUT_S", "AM_WORKER_ID"} <= set_for_workers
    check_local_worker_environment({name: "not a valid value!" for name in set_for_workers})


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
