"""S3 faults injected at botocore's before-send hook of a real client on moto, counted exactly.

The outage tests of tile transfers and of model downloads answer chosen calls with an error response
(or raise a TLS error) and count what they injected; the client's own retries are off, so every
injected fault reaches the project's retry policy::

    client = s3_without_botocore_retries()
    faults = S3Faults(client, "GetObject", count=7, answer=slow_down)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from botocore.config import Config

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def error_response(request: Any, status: int, body: bytes) -> AWSResponse:
    """S3's XML error ``body`` with HTTP ``status``, as the answer to ``request``."""
    return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Body(body))


def slow_down(request: Any) -> AWSResponse:
    return error_response(request, 503, SLOW_DOWN)


class S3Faults:
    """Answers the first ``count`` calls of ``operation`` whose URL holds ``url_part`` (all when ``count`` is None)
    with ``answer(request)``; ``injected`` counts them."""

    def __init__(self, client: Any, operation: str, *, count: int | None, answer: Callable[[Any], AWSResponse],
                 url_part: str = "") -> None:
        self.left = count
        self.answer = answer
        self.url_part = url_part
        self.injected = 0
        self.lock = threading.Lock()
        client.meta.events.register(f"before-send.s3.{operation}", self)

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        if self.url_part not in request.url:
            return None
        with self.lock:
            if self.left is not None:
                if self.left <= 0:
                    return None
                self.left -= 1
            self.injected += 1
        return self.answer(request)


def s3_without_botocore_retries() -> Any:
    return boto3.client("s3", region_name="us-east-1",
                        config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
