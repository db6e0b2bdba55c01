"""Helpers: servers started as users start them (``python -m am.api``, ``python -m am.serve serve``) on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np

from tests.environment import clean_env
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
TILE = ["--tile-size", "128", "--tile-overlap", "32"]
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server subprocess and the client to talk to it; its output goes to ``log``."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log
        self.client = httpx.Client(base_url=url, timeout=30.0)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def server_environment(tmp: Path) -> dict[str, str]:
    return clean_env(XDG_CACHE_HOME=str(tmp / "cache"), PYTHONPATH=str(REPO), AM_IDLE_EXIT_S="30",
                     HF_HUB_OFFLINE="1")


@contextmanager
def running(module_args: list[str], *, tmp: Path, name: str = "server",
            env: Mapping[str, str] | None = None) -> Iterator[Server]:
    """Start ``python -m <module_args>`` with --host/--port added, wait until it answers, stop it afterwards.

    ``env`` adds to (or replaces some of) the test environment's variables.
    """
    port = free_port()
    log = tmp / f"{name}-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", *module_args, "--host", "127.0.0.1", "--port", str(port)],
                                env={**server_environment(tmp), **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_until_up(server, path="/openapi.json")
        yield server
    finally:
        server.stop()


def wait_until_up(server: Server, *, path: str) -> None:
    def answers() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}:\n{server.log_text()[-4000:]}")
        try:
            return server.client.get(path).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, timeout=START_TIMEOUT_S, poll_s=0.2, what=f"the server to answer GET {path}",
               detail=lambda: server.log_text()[-4000:])


def png_bytes(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()
