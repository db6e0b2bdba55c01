"""The benchmark's embedded endpoint, in its child process, serves only the benchmark: its token, as a run's.

moto accepts any key, so an endpoint on 127.0.0.1 without a token let any user of the machine read
and write the benchmark's objects and queues.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from am.bench.loop import endpoint_process
from am.transport.clients import TOKEN_HEADER, ClientFactory, embedded_token


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    # No proxy: the request must reach the endpoint on loopback, whatever HTTP_PROXY says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def endpoint_url():
    with endpoint_process() as url:
        yield url


def test_a_request_without_the_token_is_refused(endpoint_url: str) -> None:
    assert status_of(endpoint_url + "/") == 403
    assert status_of(endpoint_url + "/", {TOKEN_HEADER: "guessed"}) == 403


def test_the_benchmarks_own_clients_carry_the_token(endpoint_url: str) -> None:
    clients = ClientFactory(endpoint_url=endpoint_url)
    assert clients.embedded
    clients.s3().create_bucket(Bucket="am-bench-token-test")
    assert "am-bench-token-test" in [b["Name"] for b in clients.s3().list_buckets()["Buckets"]]
    queue = clients.sqs().create_queue(QueueName="am-bench-token-test")["QueueUrl"]
    clients.sqs().delete_queue(QueueUrl=queue)
    # The token itself, sent by hand, is what lets a request in.
    assert status_of(endpoint_url + "/", {TOKEN_HEADER: embedded_token(endpoint_url) or ""}) == 200


def test_the_token_is_forgotten_once_the_endpoint_stops() -> None:
    with endpoint_process() as url:
        assert embedded_token(url)
    assert embedded_token(url) is None
