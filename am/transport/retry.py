"""The one retry policy of every S3 and SQS call: throttling, 5xx and dropped connections only.

A call is retried with exponential backoff and full jitter when AWS says to slow down, when
the service failed (HTTP 5xx), or when the connection failed or timed out. Anything else,
a 403 or a missing key say, cannot improve by waiting and fails at once. When the attempts
run out, :class:`~am.errors.TransportError` names the call, the attempts and the last error::

    policy = RetryPolicy(attempts=6)
    body = policy.call("get s3://in/j1/g/0001.png", s3.get_object, Bucket="in", Key="j1/g/0001.png")
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    MetadataRetrievalError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from am.errors import AmError, TransportError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Error codes that mean "slow down": botocore's standard retry mode lists the same family
# (botocore/retries/standard.py) and the S3 and SQS error pages add their own spellings.
THROTTLING_CODES = frozenset({
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "AWS.SimpleQueueService.RequestThrottled",
    # SQS: too many messages in flight on the queue; some will be deleted soon.
    "OverLimit",
    # SQS on a queue encrypted with a KMS key: KMS is throttling the queue's data-key requests.
    "KMS.ThrottlingException",
})
# Codes a service sends for its own transient faults, whatever HTTP status carries them.
TRANSIENT_CODES = frozenset({
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "AWS.SimpleQueueService.ServiceUnavailable",
    "KmsThrottled",
})
# Failures of the connection itself, before or while a response arrives. botocore's own standard retry
# mode treats its ConnectionError family (SSLError, ProxyConnectionError, EndpointConnectionError, ...)
# and HTTPClientError (a connection broken mid-response) as transient; so do we.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    BotocoreConnectionError,
    HTTPClientError,
    EndpointConnectionError,
    ConnectionClosedError,
    ReadTimeoutError,
    ConnectTimeoutError,
    IncompleteReadError,
    ResponseStreamingError,
    # Python's own (ConnectionResetError and kin), where a transport lets one through unwrapped.
    ConnectionError,
    # The task's credentials endpoint (ECS) or the instance metadata service did not answer in time:
    # botocore fetches credentials again on the next call. NoCredentialsError (none configured) is not here.
    CredentialRetrievalError,
    MetadataRetrievalError,
)
HTTP_TOO_MANY_REQUESTS = 429


class RetryableError(Exception):
    """Raise inside a retried call to ask for another attempt, e.g. when a batch call partly failed."""


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError, or "" for anything else."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int:
    """The HTTP status of a ClientError, or 0 for anything else."""
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def is_retryable(exc: BaseException) -> bool:
    """Whether waiting and trying again can help: throttling, 5xx, connection failures."""
    if isinstance(exc, (RetryableError, *CONNECTION_ERRORS)):
        return True
    if isinstance(exc, ClientError):
        code, status = error_code(exc), http_status(exc)
        return code in THROTTLING_CODES or code in TRANSIENT_CODES or status >= 500 or status == HTTP_TOO_MANY_REQUESTS
    return False


def gave_up_waiting(exc: BaseException) -> bool:
    """Whether ``exc`` is a TransportError raised because retries ran out on a retryable error.

    Such a failure says nothing about the object or message at hand, only that the service or the
    network was unavailable for the policy's whole budget: a caller that can wait longer, or give its
    work back, should not charge it to the work.
    """
    if not isinstance(exc, TransportError):
        return False
    cause = exc.__cause__
    while cause is not None:
        if is_retryable(cause):
            return True
        cause = cause.__cause__
    return False


def describe(exc: BaseException) -> str:
    """A one-line account of an AWS error for log lines and TransportError messages."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = http_status(exc)
        return f"{error.get('Code', '?')} (HTTP {status or '?'}): {error.get('Message', '') or exc}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: ``attempts`` in all, waits between ``base_s`` and ``max_wait_s``.

    The wait before attempt n (n = 2, 3, ...) is uniform in [0, min(max_wait_s, base_s * 2**n)]
    ("full jitter"), so many workers throttled at once do not retry in step. With the defaults a call
    that keeps failing is given up after at most 0.8 + 1.6 + 3.2 + 6.4 + 10 = 22 s of waits (11 s on
    average): long enough to ride out a burst of throttling, short enough that a caller with its own
    patience (the worker's, for a tile's transfers) decides what a longer outage means. ``sleep`` is
    injectable for tests.
    """

    attempts: int = 6
    base_s: float = 0.2
    max_wait_s: float = 10.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise TransportError(f"retry attempts must be at least 1, got {self.attempts}")
        if self.base_s < 0 or self.max_wait_s < 0:
            raise TransportError(f"retry waits must be >= 0, got base {self.base_s} s, max {self.max_wait_s} s")

    def wait_s(self, state: RetryCallState) -> float:
        """The jittered wait after the failed attempt ``state.attempt_number``, before the next one."""
        next_attempt = state.attempt_number + 1
        return random.uniform(0.0, min(self.max_wait_s, self.base_s * 2.0**next_attempt))

    def call(self, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` under this policy; ``what`` names the call in logs and errors.

        am-segm's own errors (AmError) raised inside ``fn`` pass through untouched; any other
        botocore error that is not retryable becomes a TransportError at once.
        """
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=self.wait_s,
            retry=retry_if_exception(is_retryable),
            sleep=self.sleep,
            before_sleep=lambda state: _log_retry(what, state),
            reraise=True,
        )
        try:
            return retrying(fn, *args, **kwargs)
        except AmError:
            raise
        except (ClientError, BotoCoreError, RetryableError, *CONNECTION_ERRORS) as exc:
            if is_retryable(exc):
                raise TransportError(
                    f"{what} failed {self.attempts} time(s), giving up; last error: {describe(exc)}. "
                    "Check the endpoint and network, or retry later if AWS is throttling"
                ) from exc
            raise TransportError(f"{what} failed and was not retried: {describe(exc)}") from exc


def _log_retry(what: str, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning("%s failed (attempt %d): %s; retrying in %.2f s", what, state.attempt_number,
                describe(exc) if exc else "?", wait)


DEFAULT_POLICY = RetryPolicy()

__all__ = [
    "DEFAULT_POLICY",
    "RetryPolicy",
    "RetryableError",
    "describe",
    "error_code",
    "gave_up_waiting",
    "http_status",
    "is_retryable",
]
