"""Where both HTTP services listen: the port is taken before anything else starts.

uvicorn runs an app's startup (the task API's clean-up of its data folder, its task runner)
before it binds the port, and exits with its own status 3 when the port is taken. Binding first
means a server that cannot listen touches nothing and says why, as any command does::

    sock = listening_socket(host, port)      # ConfigError if the address is taken
    ...                                      # build the app only now
    serve(app, sock, log_level="info")
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from am.api.stopping import BACKSTOP_S, GRACE_S, InFlightRequests, StoppingServer
from am.errors import ConfigError

log = logging.getLogger(__name__)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free one), or ConfigError naming the address."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: {exc.strerror}; give an address of this machine, such as 127.0.0.1 or "
                          "0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart at once
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"the server could not start on {host}:{port} ({exc.strerror or exc}): if the address is "
                          "in use, another server holds the port; choose another --port") from None
    return sock


def address_url(sock: socket.socket) -> str:
    """The http:// URL of a bound socket (an IPv6 address in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(app: Any, sock: socket.socket, *, log_level: str, grace_s: float = GRACE_S) -> None:
    """Serve ``app`` on ``sock`` until SIGINT or SIGTERM; ConfigError if it could not start (the log
    says why: its startup failed). Requests still running ``grace_s`` seconds after the stop are cut
    (:mod:`am.api.stopping`)."""
    import uvicorn

    requests = InFlightRequests(app)
    server = StoppingServer(uvicorn.Config(requests, log_config=None, log_level=log_level,
                                           timeout_graceful_shutdown=grace_s + BACKSTOP_S),
                            requests=requests, grace_s=grace_s)
    # uvicorn names its address only when it binds the socket itself; with --port 0 this line is
    # the only place the chosen port appears.
    log.info("serving on %s", address_url(sock))
    # Uploads still arriving once a stop was asked for end with 503 at their next chunk (am.api.uploads).
    app.state.stopping = lambda: server.should_exit
    with sock:
        server.run(sockets=[sock])
    if not server.started:
        raise ConfigError("the server did not start; the error above says why")
