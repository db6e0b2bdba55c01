"""The embedded endpoint and its clients take nothing from this machine's AWS or proxy set-up.

A proxy in HTTP_PROXY, a profile that does not exist, a credential process that fails, a web identity
or a region name that is no AWS region broke every local run, although the embedded endpoint needs
none of them; the same set-up still counts, and is named when it fails, for any other endpoint.
"""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

import am.endpoint
import am.transport.clients
from am.endpoint import EmbeddedEndpoint
from am.errors import ConfigError, TransportError
from am.transport.clients import (
    EMBEDDED_ENDPOINT_VARIABLE,
    ENDPOINT_TOKEN_VARIABLE,
    ClientFactory,
    embedded_token,
    is_embedded,
)
from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def dead_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def round_trip(clients: ClientFactory, name: str) -> None:
    """A bucket, an object, a queue and a message through ``clients``: what a local run does first."""
    s3, sqs = clients.s3(), clients.sqs()
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="k", Body=b"data")
    assert s3.get_object(Bucket=name, Key="k")["Body"].read() == b"data"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", [])] == ["hello"]


@pytest.fixture
def endpoint() -> Iterator[str]:
    """As the local backend starts it: requests without its token are refused."""
    with EmbeddedEndpoint(require_token=True) as embedded:
        yield embedded.url


@pytest.fixture
def failing_credential_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A default profile whose credential_process fails, as the only AWS set-up of this machine."""
    config = tmp_path / "aws-config"
    config.write_text("[default]\ncredential_process = /bin/false\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return config


# ------------------------------------------------------------------------------------ proxies


def test_a_proxy_in_the_environment_is_not_used_for_the_embedded_endpoint(endpoint: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = f"http://user:pass@127.0.0.1:{dead_port()}"
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, proxy)
    monkeypatch.setenv("NO_PROXY", "localhost")  # does not cover 127.0.0.1
    round_trip(ClientFactory(endpoint_url=endpoint), "through-no-proxy")


def test_a_proxy_that_cannot_be_reached_is_named_with_the_variables_that_chose_it(
        fake_aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, f"http://127.0.0.1:{dead_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    s3 = ClientFactory(endpoint_url="http://s3.example.test").s3()
    with pytest.raises(botocore.exceptions.ProxyConnectionError) as failed:  # still retried as a connection error
        s3.list_buckets()
    assert "HTTP_PROXY/HTTPS_PROXY" in str(failed.value) and "NO_PROXY" in str(failed.value), str(failed.value)


# ------------------------------------------------------------------------------------ credentials


def test_a_profile_that_does_not_exist_does_not_break_the_embedded_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nosuch")
    monkeypatch.setenv("AWS_DEFAULT_PROFILE", "nosuch-either")
    with EmbeddedEndpoint() as embedded:  # moto, in this process, reads the profile on every request
        round_trip(ClientFactory(endpoint_url=embedded.url), "no-such-profile")
    assert am.transport.clients.os.environ["AWS_PROFILE"] == "nosuch", "the profile was not given back"
    assert am.transport.clients.os.environ["AWS_DEFAULT_PROFILE"] == "nosuch-either"


def test_a_failing_credential_process_does_not_break_the_embedded_endpoint(
        endpoint: str, failing_credential_process: Path) -> None:
    round_trip(ClientFactory(endpoint_url=endpoint), "credential-process")


def test_a_web_identity_is_not_assumed_for_the_embedded_endpoint(endpoint: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("not-a-token")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/ci")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_STS_REGIONAL_ENDPOINTS", "regional")
    # Asked, STS would be reached through this dead proxy and fail.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{dead_port()}")
    round_trip(ClientFactory(endpoint_url=endpoint), "web-identity")


def test_a_failing_credential_process_is_a_one_line_configuration_error_elsewhere(
        failing_credential_process: Path) -> None:
    with pytest.raises(ConfigError, match="cannot get AWS credentials for the sqs client: .*custom-process.*; "
                                          "sign in again") as refused:
        ClientFactory().sqs()
    assert "\n" not in str(refused.value)


def test_an_sso_profile_without_a_sign_in_is_a_one_line_configuration_error(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "aws-config"
    config.write_text("[profile sso]\nsso_start_url = https://example.awsapps.com/start\nsso_region = us-east-1\n"
                      "sso_account_id = 111122223333\nsso_role_name = Dev\nregion = us-east-1\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/sso/cache: never signed in
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "sso")
    with pytest.raises(ConfigError, match="cannot get AWS credentials: .*SSO Token.*; sign in again") as refused:
        ClientFactory().sqs().list_queues()  # the token is read as the request is signed, before it is sent
    assert "\n" not in str(refused.value)


# ------------------------------------------------------------------------------------ regions


@pytest.mark.parametrize("region", ["localhost", "garage"])
def test_a_region_that_is_no_aws_region_does_not_break_the_embedded_endpoint(
        endpoint: str, region: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    monkeypatch.setenv("AWS_REGION", region)
    round_trip(ClientFactory(endpoint_url=endpoint, region=region), f"region-{region}")


# ------------------------------------------------------------------------------------ which endpoint


def test_a_worker_knows_the_embedded_endpoint_from_its_environment(endpoint: str, failing_credential_process: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A local worker has no endpoint of its own: the backend names the orchestrator's in AM_EMBEDDED_ENDPOINT."""
    token = embedded_token(endpoint)
    assert token, "the endpoint asks for no token"
    monkeypatch.setattr(am.transport.clients, "_embedded_urls", {})  # as in another process
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead_port()}")
    monkeypatch.setenv("AWS_REGION", "localhost")
    assert not is_embedded(endpoint)
    monkeypatch.setenv(EMBEDDED_ENDPOINT_VARIABLE, endpoint)
    monkeypatch.setenv(ENDPOINT_TOKEN_VARIABLE, token)
    assert is_embedded(endpoint) and not is_embedded("http://127.0.0.1:9000")
    round_trip(ClientFactory(endpoint_url=endpoint, region="localhost"), "worker-side")


def test_a_loopback_endpoint_that_is_not_the_embedded_one_keeps_the_users_set_up(
        fake_aws_credentials: None) -> None:
    """A MinIO or localstack on localhost may check keys and need the proxy settings: it is not isolated."""
    clients = ClientFactory(endpoint_url="http://127.0.0.1:9000", region="eu-west-1")
    assert not clients.embedded
    assert clients.config().proxies is None and clients.config().region_name == "eu-west-1"
    assert clients.s3()._request_signer._credentials.access_key != "am-segm-local"


def test_the_endpoint_is_forgotten_once_stopped() -> None:
    with EmbeddedEndpoint() as embedded:
        url = embedded.url
        assert ClientFactory(endpoint_url=url).embedded
    assert not is_embedded(url)


# ------------------------------------------------------------------------------------ binding


def _start_in_thread(timeout_s: float) -> Any:
    """Start an EmbeddedEndpoint on another thread; what start() raised or returned, or "hung"."""
    outcome: list[Any] = []

    def start() -> None:
        endpoint = EmbeddedEndpoint()
        try:
            outcome.append(endpoint.start())
            endpoint.stop()
        except Exception as exc:  # handed to the test, which asserts on it
            outcome.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else "hung"


@pytest.mark.parametrize(("code", "said"), [
    (errno.EADDRNOTAVAIL, "the loopback interface has no 127.0.0.1"),
    (errno.EADDRINUSE, "Address already in use"),
])
def test_a_failed_bind_is_a_clear_error_within_seconds(code: int, said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, address: Any) -> None:
        raise OSError(code, __import__("os").strerror(code))

    monkeypatch.setattr(socket.socket, "bind", refuse)
    registered = dict(am.transport.clients._embedded_urls)
    outcome = _start_in_thread(timeout_s=10)
    assert isinstance(outcome, TransportError), f"start() gave {outcome!r}"
    assert "cannot start the embedded S3/SQS endpoint on 127.0.0.1: " + said in str(outcome), str(outcome)
    assert am.transport.clients._embedded_urls == registered


def test_a_loopback_that_cannot_be_reached_is_a_clear_error_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where lo is down, binding succeeds and only connecting fails: the run had retried for seconds."""
    def unreachable(address: Any, timeout: float | None = None, *args: Any) -> socket.socket:
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(am.endpoint.socket, "create_connection", unreachable)
    registered = dict(am.transport.clients._embedded_urls)
    outcome = _start_in_thread(timeout_s=10)
    assert isinstance(outcome, TransportError), f"start() gave {outcome!r}"
    assert "the loopback interface is down or has no 127.0.0.1" in str(outcome), str(outcome)
    assert "AM_ENDPOINT_URL" in str(outcome) and "--endpoint-url" not in str(outcome)
    assert am.transport.clients._embedded_urls == registered


def test_a_network_namespace_whose_loopback_is_down_stops_the_endpoint_at_once() -> None:
    """For real: a fresh network namespace has lo down (needs unshare and the right to use it)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.strip()}")
    code = ("from am.endpoint import EmbeddedEndpoint\n"
            "try:\n    EmbeddedEndpoint().start()\nexcept Exception as exc:\n    print(exc)\n")
    started = time.monotonic()
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", code], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "cannot start the embedded S3/SQS endpoint on 127.0.0.1: the loopback interface is down" in done.stdout
    assert time.monotonic() - started < 30


# ------------------------------------------------------------------------------------ other users


def _plain_request(url: str, *, method: str = "GET", data: bytes | None = None,
                   headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a request made as another user of the machine would: any key, or none."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def test_requests_without_the_runs_token_are_refused(endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    clients = ClientFactory(endpoint_url=endpoint)
    clients.s3().create_bucket(Bucket="the-jobs")
    clients.s3().put_object(Bucket="the-jobs", Key="job/g/0000.npy", Body=b"tile")
    token = embedded_token(endpoint)
    assert token and len(token) >= 32
    signed_by_anyone = {"Authorization": "AWS4-HMAC-SHA256 Credential=anykey/20260101/us-east-1/s3/aws4_request, "
                                         "SignedHeaders=host, Signature=0"}
    with caplog.at_level("DEBUG", logger="am.endpoint"):
        assert _plain_request(f"{endpoint}/the-jobs/job/g/0000.npy", headers=signed_by_anyone) == 403
        assert _plain_request(f"{endpoint}/the-jobs/job/g/0000.npy", method="PUT", data=b"garbage") == 403
        assert _plain_request(f"{endpoint}/?Action=ListQueues") == 403
        assert _plain_request(f"{endpoint}/the-jobs/job/g/0000.npy",
                              headers={"X-Am-Endpoint-Token": token[:-1] + ("A" if token[-1] != "A" else "B")}) == 403
    assert clients.s3().get_object(Bucket="the-jobs", Key="job/g/0000.npy")["Body"].read() == b"tile"
    assert _plain_request(f"{endpoint}/?Action=ListQueues", headers={"X-Am-Endpoint-Token": token}) == 200
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "embedded endpoint refused PUT /the-jobs/job/g/0000.npy" in said and token not in said
    assert [r.levelname for r in caplog.records if "refused" in r.getMessage()] == ["WARNING"] + ["DEBUG"] * 3


def test_an_endpoint_that_asks_for_no_token_serves_anyone() -> None:
    """For callers that hand its URL to processes of their own (a benchmark's child process, tests)."""
    with EmbeddedEndpoint(require_token=False) as open_endpoint:
        assert embedded_token(open_endpoint.url) == ""
        assert _plain_request(f"{open_endpoint.url}/?Action=ListQueues") == 200
