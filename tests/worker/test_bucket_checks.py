"""The tile and mask bucket checks of the worker and of the orchestrator share one loop and keep their own
policies: a bucket that cannot be checked is passed over with a warning by the worker, refused by the
orchestrator before any ECS task starts; each names its own settings."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from am import backends
from am.errors import ConfigError, TransportError
from am.transport.storage import NamedBucket, require_existing_buckets
from am.worker import __main__ as worker_main
from am.worker.config import WorkerConfig

REFUSED = TransportError("head bucket in-bucket failed and was not retried: AccessDenied (HTTP 403)")


class Buckets:
    """A Storage's ``bucket_exists`` over a set of buckets; one bucket's check may be refused."""

    def __init__(self, existing: set[str], *, refused: str = "") -> None:
        self.existing = existing
        self.refused = refused
        self.checked: list[str] = []

    def bucket_exists(self, bucket: str) -> bool:
        self.checked.append(bucket)
        if bucket == self.refused:
            raise REFUSED
        return bucket in self.existing


def _worker_config(**buckets: str) -> WorkerConfig:
    return WorkerConfig(queue_url="http://sqs/q", **{"input_bucket": "in-bucket", "output_bucket": "out-bucket",
                                                     **buckets})


def _resources(**buckets: str) -> SimpleNamespace:
    return SimpleNamespace(**{"input_bucket": "in-bucket", "output_bucket": "out-bucket", **buckets})


def test_the_first_missing_bucket_is_refused_with_its_own_message() -> None:
    storage = Buckets({"b"})
    passed_over: list[tuple[NamedBucket, TransportError]] = []
    with pytest.raises(ConfigError, match=r"^no a \(A, OutA\)$"):
        require_existing_buckets(
            storage, [NamedBucket("b", "B", "OutB"), NamedBucket("a", "A", "OutA"), NamedBucket("c", "C", "OutC")],
            missing=lambda n: f"no {n.bucket} ({n.setting}, {n.output})",
            unchecked=lambda n, exc: passed_over.append((n, exc)))
    assert storage.checked == ["b", "a"] and passed_over == []


@pytest.mark.parametrize(("setting", "buckets"), [("AM_INPUT_BUCKET", {"input_bucket": "typo-bucket"}),
                                                  ("AM_OUTPUT_BUCKET", {"output_bucket": "typo-bucket"})])
def test_the_worker_names_its_environment_variable(setting: str, buckets: dict[str, str]) -> None:
    output = "InputBucket" if setting == "AM_INPUT_BUCKET" else "OutputBucket"
    with pytest.raises(ConfigError) as raised:
        worker_main.require_buckets(Buckets({"in-bucket", "out-bucket"}), _worker_config(**buckets))
    assert str(raised.value) == (f"bucket typo-bucket ({setting}) does not exist; set {setting} to an existing "
                                 f"bucket (on AWS, the stack's {output} output)")


def test_the_worker_goes_on_past_a_bucket_it_cannot_check(caplog: pytest.LogCaptureFixture) -> None:
    storage = Buckets({"out-bucket"}, refused="in-bucket")
    with caplog.at_level(logging.WARNING, logger="am.worker"):
        worker_main.require_buckets(storage, _worker_config())
    assert storage.checked == ["in-bucket", "out-bucket"]
    assert (f"cannot check that bucket in-bucket (AM_INPUT_BUCKET) exists, going on (HeadBucket needs s3:ListBucket; "
            f"a missing bucket will stop the worker at its first tile instead): {REFUSED}") in caplog.text


def test_the_worker_still_refuses_a_missing_bucket_after_one_it_cannot_check() -> None:
    with pytest.raises(ConfigError, match=r"^bucket out-bucket \(AM_OUTPUT_BUCKET\) does not exist"):
        worker_main.require_buckets(Buckets(set(), refused="in-bucket"), _worker_config())


@pytest.mark.parametrize(("setting", "output"), [("input_bucket", "InputBucket"), ("output_bucket", "OutputBucket")])
def test_the_orchestrator_names_its_setting_and_the_stack_output(setting: str, output: str) -> None:
    with pytest.raises(ConfigError) as raised:
        backends.require_buckets(Buckets({"in-bucket", "out-bucket"}), _resources(**{setting: "typo-bucket"}))
    assert str(raised.value) == (f"bucket typo-bucket ({setting}: the stack's {output} output, or "
                                 f"AM_{setting.upper()} or the config file) does not exist; deploy the stack "
                                 f"(make deploy), or set {setting} to an existing bucket")


def test_the_orchestrator_refuses_a_bucket_it_cannot_check_before_any_task_starts() -> None:
    storage = Buckets({"in-bucket", "out-bucket"}, refused="in-bucket")
    with pytest.raises(ConfigError) as raised:
        backends.require_buckets(storage, _resources())
    assert str(raised.value) == ("bucket in-bucket (input_bucket) cannot be checked before the ECS workers start: "
                                 f"{REFUSED}")
    assert raised.value.__cause__ is REFUSED
    assert storage.checked == ["in-bucket"]
