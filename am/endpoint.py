"""The embedded S3 + SQS endpoint of the local backend: moto's server on 127.0.0.1.

It lets a laptop run the very protocol that runs on AWS (same boto3 calls, same message
semantics: visibility timeouts, redrive to a dead-letter queue) with no account. The server
runs on a daemon thread of the orchestrator, so it cannot outlive the command::

    with EmbeddedEndpoint() as endpoint:
        clients = ClientFactory(endpoint_url=endpoint.url)   # isolated from the user's AWS set-up

The socket is bound in the calling thread, so a failure to bind is raised here at once: moto's
ThreadedMotoServer binds in its own thread, where werkzeug answers a failed bind with sys.exit(),
and its start() then waited forever. While it runs, the endpoint's URL is registered with
:mod:`am.transport.clients`, whose clients of it then use no proxy, no credentials of the user and
a fixed region.

moto accepts any key, so a port on 127.0.0.1 alone would let any user of the machine read and write
a running job's tiles, masks and messages. The local backend's endpoint and the benchmark's (``require_token=True``)
make a random token that every request must carry in the ``X-Am-Endpoint-Token`` header (its
clients in this process add it; local workers get it in ``AM_ENDPOINT_TOKEN``, which only the user
who runs them can read); others are answered 403.
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from am.errors import TransportError
from am.transport.clients import TOKEN_HEADER, forget_embedded_endpoint, register_embedded_endpoint

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# moto's server logs every request at INFO through werkzeug: thousands of lines per job.
REQUEST_LOGGER = "werkzeug"
# Seconds the server thread gets to finish when the endpoint stops.
STOP_JOIN_S = 10.0
# The profile variables moto's own botocore session reads on each request it serves: one naming a
# profile that does not exist made every request of the run an HTTP 500.
PROFILE_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE")
# The header as WSGI names it in the request's environ.
_TOKEN_ENVIRON_KEY = "HTTP_" + TOKEN_HEADER.upper().replace("-", "_")
_REFUSED_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>this embedded '
                 b"endpoint serves only the am-segm run that started it</Message></Error>")
# Why a bind fails, in words for the user, by errno; anything else is said as the OS says it.
# Seconds the check that the listening socket can be reached may take: on loopback, far less.
CONNECT_CHECK_S = 5.0
_LOOPBACK_DOWN = f"the loopback interface is down or has no {LOOPBACK} (bring up lo with {LOOPBACK}/8)"
_BIND_CAUSES = {
    errno.EADDRNOTAVAIL: f"the loopback interface has no {LOOPBACK} (bring up lo with {LOOPBACK}/8)",
    errno.ENETUNREACH: _LOOPBACK_DOWN,
    errno.EHOSTUNREACH: _LOOPBACK_DOWN,
    errno.EACCES: "the system refused it (a sandbox or security policy forbids listening sockets)",
    errno.EPERM: "the system refused it (a sandbox or security policy forbids listening sockets)",
}


class EmbeddedEndpoint:
    """An S3/SQS endpoint bound to loopback only, on a free port chosen by the kernel."""

    def __init__(self, *, host: str = LOOPBACK, require_token: bool = False) -> None:
        """``require_token`` makes the endpoint refuse requests without its token (:class:`TokenGate`): the local
        backend's and the benchmark's, whose URL and token reach only their own clients and workers. Left off, it
        serves any request: for tests that drive it with clients of their own."""
        if host != LOOPBACK:
            raise TransportError(f"the embedded endpoint binds to {LOOPBACK} only, not {host!r}")
        self._host = host
        self._token = secrets.token_urlsafe(32) if require_token else ""
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        logging.getLogger(REQUEST_LOGGER).setLevel(logging.WARNING)
        self._url = ""

    @property
    def url(self) -> str:
        if not self._url:
            raise TransportError("the embedded endpoint is not running; call start() first")
        return self._url

    def start(self) -> str:
        if self._url:
            raise TransportError(f"the embedded endpoint is already running on {self._url}")
        sock = bind_listening_socket(self._host)
        try:
            self._server = _moto_server(sock, self._token)
        finally:
            sock.close()  # the server holds its own duplicate of the descriptor
        host, port = self._server.server_address[:2]
        self._url = f"http://{host}:{port}"
        _profile_guard.enter()
        register_embedded_endpoint(self._url, self._token)
        self._thread = threading.Thread(target=self._server.serve_forever, name="am-embedded-endpoint", daemon=True)
        try:
            self._thread.start()
        except RuntimeError as exc:  # no thread to be had: this process is at its limit
            self.stop()
            raise TransportError(f"cannot start the embedded S3/SQS endpoint's thread: {exc}") from exc
        log.info("embedded S3/SQS endpoint listening on %s", self._url)
        return self._url

    def stop(self) -> None:
        if not self._url or self._server is None:
            return
        if self._thread is not None and self._thread.is_alive():
            # shutdown() waits for serve_forever() to return: called without one running, it would wait forever.
            self._server.shutdown()
            self._thread.join(timeout=STOP_JOIN_S)
        self._server.server_close()
        forget_embedded_endpoint(self._url)
        _profile_guard.leave()
        log.info("embedded S3/SQS endpoint on %s stopped", self._url)
        self._url = ""

    def __enter__(self) -> EmbeddedEndpoint:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def bind_listening_socket(host: str) -> socket.socket:
    """A TCP socket listening on ``host`` at a port the kernel picks; TransportError naming the cause if it cannot.

    Binding succeeds even where ``lo`` is down (a fresh network namespace, a container without its
    loopback), and every client's connection then fails as an unreachable network: the run retried
    for seconds and blamed "the endpoint and network". So the socket is connected to once here.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(socket.SOMAXCONN)
        _connect_once(sock)
    except OSError as exc:
        sock.close()
        cause = _BIND_CAUSES.get(exc.errno or 0, exc.strerror or str(exc))
        raise TransportError(f"cannot start the embedded S3/SQS endpoint on {host}: {cause} ({exc}); or run against "
                             "an S3/SQS endpoint of your own (AM_ENDPOINT_URL or endpoint_url in the config) or AWS "
                             "(--backend aws)") from exc
    return sock


def _connect_once(sock: socket.socket) -> None:
    """Connect to the listening ``sock`` and take the connection off its queue (the server never sees it)."""
    with socket.create_connection(sock.getsockname()[:2], timeout=CONNECT_CHECK_S):
        sock.settimeout(CONNECT_CHECK_S)
        try:
            accepted, _ = sock.accept()
            accepted.close()
        finally:
            sock.settimeout(None)


def _moto_server(sock: socket.socket, token: str) -> BaseWSGIServer:
    """moto's app and request handler, as ThreadedMotoServer builds them, served from ``sock`` (behind
    :class:`TokenGate` where ``token`` is given)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )

    app: Any = DomainDispatcherApplication(create_backend_app)
    if token:
        app = TokenGate(app, token)
    host, port = sock.getsockname()[:2]
    return make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler, fd=sock.fileno())


class TokenGate:
    """WSGI middleware: passes on the requests that carry ``token`` in :data:`TOKEN_HEADER`, answers others 403.

    Compared in constant time, so the answer's timing tells nothing of the token. The first refusal is
    a warning (something else on this machine is talking to the run's endpoint), later ones DEBUG lines,
    so that a client polling in a loop cannot flood the run's log; none holds the header's value.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], token: str) -> None:
        self._app = app
        self._token = token.encode()
        self._refused = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = str(environ.get(_TOKEN_ENVIRON_KEY, "")).encode("utf-8", "replace")
        if hmac.compare_digest(given, self._token):
            return self._app(environ, start_response)
        self._refused += 1
        log.log(logging.WARNING if self._refused == 1 else logging.DEBUG,
                "embedded endpoint refused %s %s from %s: %s token%s", environ.get("REQUEST_METHOD", "?"),
                environ.get("PATH_INFO", "?"), environ.get("REMOTE_ADDR", "?"), "a wrong" if given else "no",
                " (further refusals are logged at DEBUG)" if self._refused == 1 else "")
        start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                         ("Content-Length", str(len(_REFUSED_BODY)))])
        return [_REFUSED_BODY]


class _ProfileGuard:
    """Keeps AWS_PROFILE and AWS_DEFAULT_PROFILE out of os.environ while an embedded endpoint runs in this process.

    moto, serving in this process, builds a botocore session that reads them on every request; the
    embedded endpoint needs no profile and its clients read none, but a profile that does not exist
    made each request an HTTP 500. The values come back when the last endpoint stops. A local run
    never talks to AWS (the local backend refuses s3:// models), so nothing else of it needs them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._saved: dict[str, str] = {}

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                self._saved = {name: os.environ.pop(name) for name in PROFILE_VARIABLES if name in os.environ}
                if self._saved:
                    log.debug("%s unset while the embedded endpoint runs: it reads no AWS profile",
                              " and ".join(self._saved))
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                for name, value in self._saved.items():
                    os.environ.setdefault(name, value)
                self._saved = {}


_profile_guard = _ProfileGuard()
