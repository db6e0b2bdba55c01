"""The transport against moto's HTTP server on 127.0.0.1, as the local backend uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from am.endpoint import EmbeddedEndpoint
from am.transport.clients import ClientFactory, is_loopback
from am.transport.queue import Queue, ensure_tile_queues
from am.transport.storage import Storage


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with EmbeddedEndpoint() as embedded:
        yield embedded.url


def test_loopback_endpoint_works_without_credentials(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    clients = ClientFactory(endpoint_url=server)
    storage = Storage(clients.s3())
    storage.ensure_bucket("server-bucket")
    storage.put_bytes("server-bucket", "a/b", b"hello")
    assert storage.get_bytes("server-bucket", "a/b") == b"hello"


def test_dead_letter_redrive_in_server_mode(server: str) -> None:
    clients = ClientFactory(endpoint_url=server)
    sqs = clients.sqs()
    url, dlq_url = ensure_tile_queues(sqs, name="srv-tiles", dead_letter_name="srv-tiles-dlq",
                                      visibility_timeout_s=30, max_receive_count=2)
    queue, dlq = Queue(sqs, url), Queue(sqs, dlq_url)
    queue.send_many(["poison"])
    for expected in (1, 2):
        (received,) = queue.receive(wait_s=0)
        assert received.receive_count == expected
        queue.change_visibility(received.receipt_handle, 0)
    assert queue.receive(wait_s=1) == []
    assert [r.body for r in dlq.receive(wait_s=1)] == ["poison"]


def test_is_loopback() -> None:
    assert is_loopback("http://127.0.0.1:5000")
    assert is_loopback("http://localhost:5000")
    assert not is_loopback("")
    assert not is_loopback("https://s3.eu-west-1.amazonaws.com")
