"""A server stopped while requests are running answers or cuts them after its grace period, says how many in one
line of its own, and exits 0 with no ERROR and no traceback (uvicorn logged both: a supervisor reads a crash).

The task API as ``python -m am.api`` serves it (tests/api/stop_server.py), with a 1 s grace period and
requests that would never end: an upload whose client stalled, a route that never answers, an answer
that streams for ever.
"""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest

from am.api.stopping import STOPPING_DETAIL
from am.api.uploads import STOPPING

from .servers import running

GRACE_S = 1.0


def opened(url: str, request: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(request)
    return sock


def everything_sent_back(sock: socket.socket) -> bytes:
    """What the server sent until it closed the connection."""
    received = b""
    with sock:
        while chunk := sock.recv(1 << 16):
            received += chunk
    return received


def json_answer(received: bytes) -> tuple[int, dict]:
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.fixture
def stop_log(tmp_path) -> tuple[int, str, dict[str, bytes]]:
    """Stop a server with one request of each kind running; its exit code, its log and what each client got."""
    with running(["tests.api.stop_server", "--data-dir", str(tmp_path / "data"), "--grace-s", str(GRACE_S)],
                 tmp=tmp_path, name="stopping") as server:
        clients = {
            "upload": opened(server.url, b"POST /tasks HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
                                         b"Content-Length: 100000\r\n\r\n\x89PNG" + b"0" * 996),
            "hold": opened(server.url, b"GET /test/hold HTTP/1.1\r\nHost: t\r\n\r\n"),
            "stream": opened(server.url, b"GET /test/stream HTTP/1.1\r\nHost: t\r\n\r\n"),
        }
        assert clients["stream"].recv(1 << 16).startswith(b"HTTP/1.1 200 "), "the streamed answer has started"
        time.sleep(0.5)  # the upload's first bytes and the hold request have reached their routes
        code = server.stop(signal.SIGTERM)
        return code, server.log_text(), {name: everything_sent_back(sock) for name, sock in clients.items()}


def test_a_stop_cuts_the_requests_still_running_and_says_how_many_once(stop_log) -> None:
    code, text, _ = stop_log
    assert code == 0, text
    lines = [line for line in text.splitlines() if "still running" in line]
    assert len(lines) == 1 and "stopping: 3 request(s) still running 1 s after the stop" in lines[0], text
    assert " ERROR " not in text and "Traceback" not in text, text
    assert text.count("am.api: stopped; cleaned up") == 1, text


def test_the_requests_not_yet_answered_get_503_and_an_answer_under_way_is_cut_short(stop_log) -> None:
    _, text, received = stop_log
    assert json_answer(received["upload"]) == (503, {"detail": STOPPING}), text
    assert json_answer(received["hold"]) == (503, {"detail": STOPPING_DETAIL}), text
    # Chunked: a complete answer ends with an empty chunk; one cut short must not look complete.
    assert b"xxx" in received["stream"] and not received["stream"].endswith(b"0\r\n\r\n"), text
