"""Local launcher: worker subprocesses (``python -m am.worker``) on this machine.

Workers run in their own process session, so a Ctrl-C in the terminal reaches only the
orchestrator, which then stops them in order (SIGTERM, then SIGKILL after ``stop_timeout_s``).
Each worker is told that deadline (``AM_STOP_TIMEOUT_S``) and keeps its own grace for finishing
its batch inside it, so the SIGKILL never lands before it has given back what it could not
finish. On Linux each worker also gets SIGTERM if the orchestrator dies without cleaning up.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from am.errors import LauncherError
from am.launchers.children import die_with_parent
from am.transport.clients import EMBEDDED_ENDPOINT_VARIABLE, ENDPOINT_TOKEN_VARIABLE
from am.worker.config import DEFAULT_STOP_TIMEOUT_S

log = logging.getLogger(__name__)

# Seconds from SIGTERM to SIGKILL; the worker's grace is this less its release margin (STOP_RELEASE_MARGIN_S).
STOP_TIMEOUT_S = DEFAULT_STOP_TIMEOUT_S
# The user's AWS set-up in the orchestrator's environment: keys, and everything that names a profile, a
# config or credentials file, a role to assume, a container's credentials or a region. Workers of the
# embedded endpoint get none of it: the endpoint accepts any key (their clients sign with placeholder
# keys, am.transport.clients), so real keys would only be exposed to more processes for nothing, and a
# broken profile, an expired SSO sign-in or a credential process failed or prompted in each worker.
# Workers of a configured endpoint must sign their requests the way the orchestrator does, so they keep it.
AWS_SETUP_PREFIX = "AWS_"
# Set by the backend for workers of the embedded endpoint alone; one inherited must never reach other workers.
BACKEND_ONLY_VARIABLES = (EMBEDDED_ENDPOINT_VARIABLE, ENDPOINT_TOKEN_VARIABLE)


def launcher_variables(number: int, *, stop_timeout_s: float = STOP_TIMEOUT_S) -> dict[str, str]:
    """What the launcher itself tells worker ``number``, over the backend's variables and the environment
    the worker inherits; :func:`am.backends.check_local_worker_environment` leaves these unchecked."""
    return {"AM_WORKER_ID": f"local-{os.getpid()}-{number}", "AM_STOP_TIMEOUT_S": str(stop_timeout_s)}


def inherited_environment(base_environment: Mapping[str, str], *, strip_aws: bool) -> dict[str, str]:
    """What workers inherit of ``base_environment``: without the backend's own variables, and with
    ``strip_aws`` without any ``AWS_*`` one; the names dropped are logged at DEBUG, never their values."""
    dropped = sorted(name for name in base_environment
                     if name in BACKEND_ONLY_VARIABLES or (strip_aws and name.startswith(AWS_SETUP_PREFIX)))
    if dropped:
        log.debug("not passed on to the local workers: %s", ", ".join(dropped))
    return {name: value for name, value in base_environment.items() if name not in dropped}


class LocalLauncher:
    """Starts and stops worker subprocesses; each writes its log to ``log_dir/worker-N.log``.

    ``strip_credentials`` drops every ``AWS_*`` variable (:data:`AWS_SETUP_PREFIX`) from
    ``base_environment``: right for the embedded endpoint, wrong for a configured one that checks keys.
    """

    def __init__(self, *, log_dir: Path, python: str = sys.executable, base_environment: Mapping[str, str],
                 strip_credentials: bool = True, stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self._log_dir = Path(log_dir)
        self._python = python
        self._base_env = inherited_environment(base_environment, strip_aws=strip_credentials)
        self._stop_timeout_s = stop_timeout_s
        self._procs: list[subprocess.Popen[bytes]] = []
        given = base_environment.get("AM_STOP_TIMEOUT_S", "").strip()
        if given:
            # Replaced in start(): a worker told a later deadline than this launcher keeps would be
            # killed before it gave its work back. No setting changes it; say so rather than drop it silently.
            log.warning("environment variable AM_STOP_TIMEOUT_S = %r does not reach the local workers: this "
                        "launcher stops them %.0f s after SIGTERM and tells them so (AM_STOP_TIMEOUT_S is for "
                        "workers started by other means, such as python -m am.worker or ECS); unset it",
                        given, self._stop_timeout_s)
        self._logs: list[Path] = []

    def start(self, count: int, environment: Mapping[str, str]) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            number = len(self._procs)
            log_path = self._log_dir / f"worker-{number}.log"
            env = {**self._base_env, **environment,
                   **launcher_variables(number, stop_timeout_s=self._stop_timeout_s)}
            try:
                with open(log_path, "ab") as log_file:
                    proc = subprocess.Popen(
                        [self._python, "-m", "am.worker"],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=die_with_parent,
                    )
            except OSError as exc:
                raise LauncherError(f"cannot start worker process with {self._python}: {exc}") from exc
            self._procs.append(proc)
            self._logs.append(log_path)
            log.info("started worker %d (pid %d), log %s", number, proc.pid, log_path)

    def alive(self) -> int:
        return sum(1 for proc in self._procs if proc.poll() is None)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def exit_codes(self) -> list[int | None]:
        return [proc.poll() for proc in self._procs]

    def log_tail(self, *, lines: int = 15) -> str:
        """The last lines of every worker's log, for error messages when workers die."""
        parts = []
        for path in self._logs:
            if path.is_file():
                tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def kill(self) -> None:
        """SIGKILL every worker still running, without the stop's grace: for a user who insists on quitting."""
        running = [proc for proc in self._procs if proc.poll() is None]
        for proc in running:
            proc.kill()
        for proc in running:
            proc.wait()
        if running:
            log.info("killed %d worker process(es)", len(running))

    def stop(self) -> None:
        running = [proc for proc in self._procs if proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout_s
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop within %.0f s; killing it", proc.pid, self._stop_timeout_s)
                proc.kill()
                proc.wait()
        if running:
            log.info("stopped %d worker process(es)", len(running))
