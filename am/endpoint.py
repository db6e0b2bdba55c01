"""The embedded S3 + SQS endpoint of the local backend: moto's server on 127.0.0.1.

It lets a laptop run the very protocol that runs on AWS (same boto3 calls, same message
semantics: visibility timeouts, redrive to a dead-letter queue) with no account. The server
runs on a daemon thread of the orchestrator, so it cannot outlive the command::

    with EmbeddedEndpoint() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint.url, ...)
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType

from moto.server import ThreadedMotoServer

from am.errors import TransportError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# moto's server logs every request at INFO through werkzeug: thousands of lines per job.
REQUEST_LOGGER = "werkzeug"


class EmbeddedEndpoint:
    """An S3/SQS endpoint bound to loopback only, on a free port chosen by the kernel."""

    def __init__(self, *, host: str = LOOPBACK) -> None:
        if host != LOOPBACK:
            raise TransportError(f"the embedded endpoint binds to {LOOPBACK} only, not {host!r}")
        self._server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
        logging.getLogger(REQUEST_LOGGER).setLevel(logging.WARNING)
        self._url = ""

    @property
    def url(self) -> str:
        if not self._url:
            raise TransportError("the embedded endpoint is not running; call start() first")
        return self._url

    def start(self) -> str:
        try:
            self._server.start()
        except OSError as exc:
            raise TransportError(f"cannot start the embedded S3/SQS endpoint on {LOOPBACK}: {exc}") from exc
        host, port = self._server.get_host_and_port()
        self._url = f"http://{host}:{port}"
        self._wait_until_listening(host, port)
        log.info("embedded S3/SQS endpoint listening on %s", self._url)
        return self._url

    @staticmethod
    def _wait_until_listening(host: str, port: int) -> None:
        with socket.create_connection((host, port), timeout=10):
            pass

    def stop(self) -> None:
        if self._url:
            self._server.stop()
            log.info("embedded S3/SQS endpoint on %s stopped", self._url)
            self._url = ""

    def __enter__(self) -> EmbeddedEndpoint:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
