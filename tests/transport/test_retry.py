"""The retry policy: which failures are retried, how exhaustion is reported."""

from __future__ import annotations

import random
from typing import Any

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    MetadataRetrievalError,
    NoCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
    SSLError,
)
from botocore.stub import Stubber

from am.errors import InputError, TransportError
from am.transport.retry import RetryPolicy, gave_up_waiting, is_retryable
from am.transport.storage import Storage


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} happened"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


class Flaky:
    """Raises the given errors in order, then returns ``result``."""

    def __init__(self, errors: list[BaseException], result: Any = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def policy(attempts: int = 4) -> tuple[RetryPolicy, list[float]]:
    waits: list[float] = []
    return RetryPolicy(attempts=attempts, base_s=0.5, max_wait_s=4.0, sleep=waits.append), waits


@pytest.mark.parametrize(
    "error",
    [
        client_error("Throttling", 400),
        client_error("ThrottlingException", 400),
        client_error("RequestLimitExceeded", 400),
        client_error("SlowDown", 503),
        client_error("RequestThrottled", 403),
        client_error("InternalError", 500),
        client_error("Whatever", 502),
        client_error("TooManyRequests", 429),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        client_error("KMS.ThrottlingException", 400),
        CredentialRetrievalError(provider="container-role", error_msg="timed out"),
        MetadataRetrievalError(error_msg="timed out"),
    ],
)
def test_transient_errors_are_retried_then_succeed(error: BaseException) -> None:
    retry, waits = policy()
    flaky = Flaky([error, error])
    assert retry.call("get s3://b/k", flaky) == "ok"
    assert flaky.calls == 3
    assert len(waits) == 2 and all(0 <= w <= 4.0 for w in waits)


@pytest.mark.parametrize("code,status", [("AccessDenied", 403), ("NoSuchBucket", 404), ("InvalidParameterValue", 400)])
def test_client_errors_are_not_retried(code: str, status: int) -> None:
    retry, waits = policy()
    flaky = Flaky([client_error(code, status)])
    with pytest.raises(TransportError, match=f"put s3://b/k failed and was not retried: {code} \\(HTTP {status}\\)"):
        retry.call("put s3://b/k", flaky)
    assert flaky.calls == 1 and waits == []


def test_no_credentials_at_all_is_not_retried() -> None:
    # Unlike a credentials endpoint that did not answer in time, none configured stays so.
    assert not is_retryable(NoCredentialsError())


def test_exhaustion_names_the_call_attempts_and_last_error() -> None:
    retry, waits = policy(attempts=3)
    flaky = Flaky([client_error("SlowDown", 503)] * 3)
    with pytest.raises(TransportError, match=r"get s3://b/k failed 3 time\(s\).*SlowDown \(HTTP 503\)") as info:
        retry.call("get s3://b/k", flaky)
    assert isinstance(info.value.__cause__, ClientError)
    assert flaky.calls == 3 and len(waits) == 2


def test_own_errors_and_bugs_pass_through() -> None:
    retry, _ = policy()
    with pytest.raises(InputError):
        retry.call("x", Flaky([InputError("bad input")]))
    with pytest.raises(KeyError):
        retry.call("x", Flaky([KeyError("bug")]))


def test_waits_grow_but_stay_bounded() -> None:
    retry, waits = policy(attempts=8)
    with pytest.raises(TransportError):
        retry.call("x", Flaky([client_error("Throttling", 400)] * 8))
    assert len(waits) == 7 and max(waits) <= 4.0


def test_is_retryable_classifies() -> None:
    assert is_retryable(client_error("Throttling", 400))
    assert not is_retryable(client_error("AccessDenied", 403))
    assert not is_retryable(ValueError("x"))


def test_storage_retries_through_a_real_client_with_stubbed_failures() -> None:
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    retry, waits = policy()
    with Stubber(client) as stub:
        stub.add_client_error("put_object", service_error_code="SlowDown", http_status_code=503)
        stub.add_client_error("put_object", service_error_code="InternalError", http_status_code=500)
        stub.add_response("put_object", {})
        Storage(client, retry=retry).put_bytes("bucket", "k", b"x")
        stub.assert_no_pending_responses()
    assert len(waits) == 2

    with Stubber(client) as stub:
        stub.add_client_error("put_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(TransportError, match="put s3://bucket/k failed and was not retried: AccessDenied"):
            Storage(client, retry=retry).put_bytes("bucket", "k", b"x")


def test_bad_policy_is_refused() -> None:
    with pytest.raises(TransportError, match="at least 1"):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize(
    "error",
    [
        SSLError(endpoint_url="https://s3.amazonaws.com", error="[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC]"),
        ProxyConnectionError(proxy_url="http://proxy:3128", error="Connection refused"),
        HTTPClientError(error="Connection broken: IncompleteRead(0 bytes read)"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=["SSLError", "ProxyConnectionError", "HTTPClientError", "builtin-ConnectionResetError"],
)
def test_botocore_connection_and_http_client_failures_are_retried(error: BaseException) -> None:
    # botocore's standard retry mode retries its ConnectionError family and HTTPClientError: a TLS
    # reset or a connection broken mid-response is as transient as an endpoint that did not answer.
    assert is_retryable(error)
    retry, waits = policy(attempts=4)
    flaky = Flaky([error] * 3)
    assert retry.call("put s3://b/k", flaky) == "ok"
    assert flaky.calls == 4 and len(waits) == 3


def test_waits_before_each_attempt_reach_the_documented_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Full jitter: the wait before attempt n is uniform in [0, min(max_wait_s, base_s * 2**n)]; at the
    # top of every range the default policy waits 0.8 + 1.6 + 3.2 + 6.4 + 10 = 22 s before giving up.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    waits: list[float] = []
    with pytest.raises(TransportError, match=r"failed 6 time\(s\)"):
        RetryPolicy(sleep=waits.append).call("get s3://b/k", Flaky([client_error("SlowDown", 503)] * 6))
    assert waits == pytest.approx([0.8, 1.6, 3.2, 6.4, 10.0])
    assert sum(waits) == pytest.approx(22.0)


def test_gave_up_waiting_tells_an_outage_from_a_fault_of_the_call() -> None:
    retry, _ = policy(attempts=2)
    with pytest.raises(TransportError) as throttled:
        retry.call("get s3://b/k", Flaky([client_error("SlowDown", 503)] * 2))
    with pytest.raises(TransportError) as refused:
        retry.call("get s3://b/k", Flaky([client_error("AccessDenied", 403)]))
    assert gave_up_waiting(throttled.value)
    assert not gave_up_waiting(refused.value)
    assert not gave_up_waiting(client_error("SlowDown", 503))  # not yet given up: the policy's own business
