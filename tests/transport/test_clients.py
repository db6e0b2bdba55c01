"""Mistakes in this machine's AWS configuration are said in one line naming where to look, not as a
botocore traceback from the first client made (the pipeline, a worker and am.scale all make one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from am.errors import ConfigError
from am.transport.clients import ClientFactory


@pytest.fixture
def no_aws_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_profile_that_does_not_exist(no_aws_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(ConfigError, match=r"cannot set up the AWS sqs client: The config profile \(nope\) could not be "
                                          r"found; check AWS_PROFILE, ~/.aws/config"):
        ClientFactory().sqs()


def test_a_key_id_without_its_secret(no_aws_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="missing: AWS_SECRET_ACCESS_KEY.*set together") as refused:
        ClientFactory().s3()
    assert "AKIAEXAMPLEEXAMPLE00" not in str(refused.value)


def test_a_config_file_that_does_not_parse(no_aws_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (no_aws_files / ".aws").mkdir()
    (no_aws_files / ".aws" / "config").write_text("[default\nregion = us-east-1\n")
    with pytest.raises(ConfigError, match="cannot set up the AWS ecs client: Unable to parse config file"):
        ClientFactory().ecs()
