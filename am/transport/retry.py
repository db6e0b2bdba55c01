"""The one retry policy of every S3 and SQS call: throttling, 5xx and dropped connections only.

A call is retried with exponential backoff and full jitter when AWS says to slow down, when
the service failed (HTTP 5xx), or when the connection failed or timed out. Anything else,
a 403 or a missing key say, cannot improve by waiting and fails at once; so does a TLS failure
of this machine's set-up (the endpoint's certificate not trusted by the CA bundle, or a CA bundle
that cannot be read), raised as :class:`UntrustedEndpoint`. When the attempts
run out, :class:`~am.errors.TransportError` names the call, the attempts and the last error::

    policy = RetryPolicy(attempts=6)
    body = policy.call("get s3://in/j1/g/0001.png", s3.get_object, Bucket="in", Key="j1/g/0001.png")
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

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
from botocore.exceptions import SSLError as BotocoreSSLError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from am.errors import AmError, ConfigError, TransportError

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
# OpenSSL libraries whose errors come from reading certificates (a CA bundle that is not PEM, holds no
# certificate), never from the network: "[X509: NO_CERTIFICATE_OR_CRL_FOUND]", "[PEM: ...]".
CERTIFICATE_FILE_LIBRARIES = frozenset({"X509", "PEM"})
# What an SSLError's cause may be when the CA bundle file itself cannot be opened.
UNREADABLE_FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
CA_BUNDLE_HINT = "check AWS_CA_BUNDLE / ca_bundle (the AWS config) or the endpoint URL"


class RetryableError(Exception):
    """Raise inside a retried call to ask for another attempt, e.g. when a batch call partly failed."""


class UntrustedEndpoint(ConfigError, TransportError):
    """TLS failed because of this machine's set-up: the endpoint's certificate did not verify against the
    CA bundle, or the CA bundle cannot be read. Waiting cannot fix either, and every call to the endpoint
    fails alike, so it is not retried; a worker stops on it at once instead of waiting out an "outage"."""


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


def tls_setup_problem(exc: BaseException) -> str:
    """What is wrong with this machine's TLS set-up when ``exc`` is botocore's SSLError for one, else "".

    botocore's standard retry mode (and ours before) treats every SSLError as a dropped connection, so a
    CA bundle that does not hold the endpoint's CA was waited on as an outage. A certificate that fails
    verification, or a CA bundle that is missing or not PEM, is told apart here by the exception botocore
    wraps (urllib3's SSLError around ``ssl.SSLCertVerificationError``, an ``ssl.SSLError`` of OpenSSL's
    X509 or PEM library, or the OSError of opening the file); a connection reset during the handshake or
    an SSL EOF is none of those and stays retryable.
    """
    if not isinstance(exc, BotocoreSSLError):
        return ""
    endpoint = _endpoint_of(str(exc.kwargs.get("endpoint_url", "")))
    wrapped = list(_wrapped(exc.kwargs.get("error")))
    mismatch = next((e for e in wrapped if _names_another_host(e)), None)
    if mismatch is not None:
        return (f"the certificate of {endpoint} is not for that host ({mismatch}); check the endpoint URL "
                "(AM_ENDPOINT_URL / endpoint_url): it must name a host the certificate lists")
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in wrapped) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        reason = next((e for e in wrapped if isinstance(e, ssl.SSLCertVerificationError)), None)
        detail = getattr(reason, "verify_message", "") or "certificate verify failed"
        return (f"certificate verification failed for {endpoint} ({detail}); {CA_BUNDLE_HINT}: the bundle must hold "
                "the CA that signed the endpoint's certificate")
    for error in wrapped:
        if isinstance(error, ssl.SSLError) and getattr(error, "library", None) in CERTIFICATE_FILE_LIBRARIES:
            return (f"the CA bundle for {endpoint} holds no usable certificate ({error}); {CA_BUNDLE_HINT}: it "
                    "must name a PEM file of CA certificates")
        if isinstance(error, UNREADABLE_FILE_ERRORS):
            return (f"the CA bundle for {endpoint} cannot be read ({type(error).__name__}: {error.strerror or error}); "
                    f"{CA_BUNDLE_HINT}: it must name a readable PEM file of CA certificates")
    return ""


def _names_another_host(error: BaseException) -> bool:
    """urllib3's own hostname check failed (botocore turns off the ssl module's, so urllib3 raises its
    ``CertificateError``, a ValueError, in every version: matched by name, not imported from where one
    version keeps it)."""
    return type(error).__name__ == "CertificateError" and isinstance(error, ValueError)


def _wrapped(error: object) -> list[BaseException]:
    """``error`` and the exceptions inside it: its arguments (urllib3 wraps the ssl module's error in
    its own), causes and contexts, each once."""
    found: list[BaseException] = []
    todo = [error]
    while todo and len(found) < 16:
        item = todo.pop()
        if not isinstance(item, BaseException) or any(item is seen for seen in found):
            continue
        found.append(item)
        todo.extend(arg for arg in item.args if isinstance(arg, BaseException))
        todo.extend((item.__cause__, item.__context__))
    return found


def _endpoint_of(url: str) -> str:
    """The scheme and host of a request URL: the endpoint whose certificate it is, without bucket or key."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else (url or "the endpoint")


def is_retryable(exc: BaseException) -> bool:
    """Whether waiting and trying again can help: throttling, 5xx, connection failures (not a TLS set-up fault)."""
    if tls_setup_problem(exc):
        return False
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
            if problem := tls_setup_problem(exc):
                raise UntrustedEndpoint(f"{what} failed: {problem}") from exc
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
    "UntrustedEndpoint",
    "describe",
    "error_code",
    "gave_up_waiting",
    "http_status",
    "is_retryable",
    "tls_setup_problem",
]
