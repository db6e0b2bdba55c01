"""An endpoint whose certificate the CA bundle does not verify, or a CA bundle that cannot be read, is a
set-up fault, not an S3 outage: the worker gives its messages back and exits 1 at once, naming the cause,
instead of retrying for its five minutes of patience. A TLS failure of the network stays retried.

A real TLS server on 127.0.0.1 with a self-signed certificate (made with ``cryptography``) stands for the
endpoint; the clients trust another self-signed certificate, a CA bundle that does not exist, or one that
is not PEM, and botocore raises exactly what it raises against a misconfigured endpoint.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import logging
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import SSLError

from am.errors import ConfigError, TransportError
from am.transport.retry import RetryPolicy, UntrustedEndpoint, gave_up_waiting, is_retryable, tls_setup_problem
from am.transport.storage import Storage
from tests.environment import clean_env

from .conftest import FAST_RETRY, Env, FakePredictor

x509 = pytest.importorskip("cryptography.x509", reason="cryptography makes the test's certificates")

REPO = Path(__file__).resolve().parents[2]
# How long "at once" may take: botocore's own quick retries of an SSLError, not the 300 s of patience.
AT_ONCE_S = 30.0


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) PEM files."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Silent: requests that get this far only show the endpoint is sound."""


@pytest.fixture(scope="module")
def tls_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Path]]]:
    """An HTTPS server on 127.0.0.1 and CA bundles: its own ("right"), another's ("wrong"), "missing", "junk"."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(folder, "endpoint")
    other, _ = _self_signed(folder, "other")
    junk = folder / "junk.pem"
    junk.write_text("not a certificate\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield (f"https://127.0.0.1:{server.server_address[1]}",
               {"right": cert, "wrong": other, "missing": folder / "missing.pem", "junk": junk})
    finally:
        server.shutdown()
        server.server_close()


def _s3(endpoint: str, bundle: Path) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", verify=str(bundle),
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(retries={"mode": "standard", "total_max_attempts": 1}))


def _ssl_error(endpoint: str, bundle: Path) -> SSLError:
    try:
        _s3(endpoint, bundle).head_bucket(Bucket="in-bucket")
    except SSLError as exc:
        return exc
    raise AssertionError(f"no SSLError from {endpoint} with CA bundle {bundle}")


@pytest.mark.parametrize(("bundle", "said"), [
    ("wrong", "certificate verification failed for https://127.0.0.1:"),
    ("missing", "cannot be read (FileNotFoundError"),
    ("junk", "holds no usable certificate"),
])
def test_botocores_ssl_error_for_a_bad_ca_bundle_is_a_set_up_fault_not_retried(
        tls_endpoint: tuple[str, dict[str, Path]], bundle: str, said: str) -> None:
    endpoint, bundles = tls_endpoint
    exc = _ssl_error(endpoint, bundles[bundle])
    assert not is_retryable(exc)
    problem = tls_setup_problem(exc)
    assert said in problem and "AWS_CA_BUNDLE / ca_bundle" in problem
    assert "/in-bucket" not in problem  # the endpoint, not the request's bucket
    attempts: list[int] = []

    def call() -> None:
        attempts.append(1)
        _s3(endpoint, bundles[bundle]).head_bucket(Bucket="in-bucket")

    with pytest.raises(UntrustedEndpoint, match=r"^head in-bucket failed: ") as raised:
        FAST_RETRY.call("head in-bucket", call)
    assert len(attempts) == 1
    assert isinstance(raised.value, ConfigError) and isinstance(raised.value, TransportError)
    assert not gave_up_waiting(raised.value)


def test_a_certificate_for_another_host_is_a_set_up_fault_naming_the_endpoint_url(
        tls_endpoint: tuple[str, dict[str, Path]]) -> None:
    """The CA is trusted but the certificate lists 127.0.0.1 only, and the URL says localhost: urllib3's own
    hostname check (botocore turns off the ssl module's) raises a CertificateError, no verify failure."""
    endpoint, bundles = tls_endpoint
    by_name = endpoint.replace("127.0.0.1", "localhost")
    exc = _ssl_error(by_name, bundles["right"])
    assert not is_retryable(exc)
    problem = tls_setup_problem(exc)
    assert f"the certificate of {by_name} is not for that host" in problem, problem
    assert "AM_ENDPOINT_URL" in problem
    with pytest.raises(UntrustedEndpoint):
        FAST_RETRY.call("head in-bucket", lambda: _s3(by_name, bundles["right"]).head_bucket(Bucket="in-bucket"))


def test_the_right_ca_bundle_reaches_the_endpoint(tls_endpoint: tuple[str, dict[str, Path]]) -> None:
    """The server is sound: trusted, it answers (an HTTP error, it being no S3), with no SSLError."""
    endpoint, bundles = tls_endpoint
    with pytest.raises(Exception) as raised:
        _s3(endpoint, bundles["right"]).head_bucket(Bucket="in-bucket")
    assert not isinstance(raised.value, SSLError)


@pytest.mark.parametrize("cause", [
    ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2406)"),
    ConnectionResetError(104, "Connection reset by peer"),
    ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption failed or bad record mac"),
])
def test_a_tls_failure_of_the_network_stays_retried(cause: BaseException) -> None:
    exc = SSLError(endpoint_url="https://s3.amazonaws.com/in-bucket/k", error=urllib3.exceptions.SSLError(cause))
    assert tls_setup_problem(exc) == ""
    assert is_retryable(exc)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise exc
        return "ok"

    assert RetryPolicy(attempts=3, base_s=0, max_wait_s=0, sleep=lambda _s: None).call("get", flaky) == "ok"


@pytest.mark.parametrize("bundle", ["wrong", "missing"])
def test_a_running_worker_on_an_untrusted_endpoint_gives_its_messages_back_and_exits_1_at_once(
        env: Env, tls_endpoint: tuple[str, dict[str, Path]], bundle: str, caplog: pytest.LogCaptureFixture) -> None:
    """SQS answers (moto), S3 is behind the TLS endpoint: the first tile download fails on the CA bundle."""
    endpoint, bundles = tls_endpoint
    env.put_tiles(range(3))
    storage = Storage(_s3(endpoint, bundles[bundle]), threads=4, retry=FAST_RETRY)
    worker = env.worker(FakePredictor(), storage=storage, batch_size=4, idle_exit_s=30, outage_s=300.0)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="am.worker.worker"):
        assert worker.run() == 1
    assert time.monotonic() - started < AT_ONCE_S
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    cause = ("certificate verification failed for " + endpoint if bundle == "wrong"
             else f"the CA bundle for {endpoint} cannot be read")
    assert any(cause in m and "AWS_CA_BUNDLE" in m and "giving every held message back and exiting" in m
               for m in errors), errors
    assert not any("still failing after" in m for m in errors)
    assert env.collect_results() == []  # no tile was charged a failure
    assert worker.stats.failed == 0
    assert env.dlq.depth() == {"visible": 0, "in_flight": 0}
    assert env.queue.depth() == {"visible": 3, "in_flight": 0}


def test_the_worker_process_refuses_to_start_on_an_untrusted_endpoint_naming_the_cause(
        tls_endpoint: tuple[str, dict[str, Path]]) -> None:
    """HeadBucket at start-up fails on the certificate: not taken for a missing s3:ListBucket right and
    gone past, but the worker's one error line, exit 1, within seconds."""
    endpoint, bundles = tls_endpoint
    env = clean_env(AM_QUEUE_URL=f"{endpoint}/123456789012/tiles", AM_INPUT_BUCKET="in-bucket",
                    AM_OUTPUT_BUCKET="out-bucket", AM_MODEL="/nowhere/never-loaded.pt", AM_ENDPOINT_URL=endpoint,
                    AM_WORKER_ID="tls", AWS_CA_BUNDLE=str(bundles["wrong"]), AWS_ACCESS_KEY_ID="testing",
                    AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "am.worker"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < AT_ONCE_S + 10  # the interpreter's and torch's imports included
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert "worker tls cannot start: " in errors[0]
    assert f"certificate verification failed for {endpoint}" in errors[0] and "AWS_CA_BUNDLE" in errors[0]
    assert "cannot check that bucket" not in done.stderr
