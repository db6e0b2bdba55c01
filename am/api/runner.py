"""Run queued tasks through the pipeline, a bounded number at a time, each in its own process.

Every task runs ``python -m am.pipeline <task dir> image --no-progress ...`` as a subprocess, so
a crash or a runaway allocation in one task cannot take the server down, and the pipeline's
own handling of SIGTERM (stop the workers, clean the job's queues and objects) is what a
DELETE or a server shutdown triggers. ``concurrency`` threads each wait on one process::

    runner = TaskRunner(store, PipelineCommand(settings), concurrency=1, environ=os.environ)
    runner.start()            # re-queues tasks a previous server left QUEUED or RUNNING
    runner.submit(task.id)
    runner.stop()             # running tasks go back to QUEUED; the next start resumes them

A thread survives whatever one task raises: the error is logged with its traceback and the
task recorded FAILED. An outcome that cannot be written (a full disk) is logged and written
when the thread next takes a task; a task whose outcome is never written is RUNNING on disk and
runs again when the server next starts. :meth:`TaskRunner.problem` says when a thread has died
anyway, for ``GET /health``.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from am.api.tasks import FAILED, FINISHED, GROUP, QUEUED, RUNNING, DamagedTask, TaskStore, UnknownTask
from am.api.uploads import without_pipeline_advice
from am.errors import AmError
from am.files import write_atomic
from am.imageio import encode_png, read_image
from am.launchers.children import die_with_parent
from am.launchers.local import STOP_TIMEOUT_S as LOCAL_STOP_TIMEOUT_S
from am.prepare import nominal_scale
from am.settings import Settings

log = logging.getLogger(__name__)

# The pipeline stops its workers (each may take the local launcher's whole deadline) and deletes
# its job data on SIGTERM; give it this long.
STOP_GRACE_S = LOCAL_STOP_TIMEOUT_S + 20.0
# Only the end of a task's log is searched for the reason it failed.
LOG_TAIL_BYTES = 64 * 1024
MAX_ERROR_CHARS = 2000
_ERROR_LINE = re.compile(r"^\S+ ERROR (\S+): (.*)$")
# A record in the run's log (am.cli's format: time, level, logger), not a traceback's or stderr's line.
_LOG_RECORD = re.compile(r"^\d\d:\d\d:\d\d [A-Z]+ \S+: ")


@dataclass(frozen=True)
class PipelineCommand:
    """The pipeline command line for a task, built from the server's own settings."""

    settings: Settings
    config_path: Path | None = None
    python: str = sys.executable

    def argv(self, dataset: Path, *, rows: int | None, cols: int | None) -> list[str]:
        s = self.settings
        args = [self.python, "-m", "am.pipeline", str(dataset), GROUP, "--no-progress",
                # A task re-queued by a restarted server may find the run of its previous life still
                # cleaning up (a killed server's pipelines get SIGTERM): it waits, not fails.
                "--wait-for-lock", str(TASK_LOCK_WAIT_S),
                "--backend", s.backend, "--workers", str(s.workers),
                "--tile-size", str(s.tile_size), "--tile-overlap", str(s.tile_overlap),
                "--scale", str(s.scale), "--tta", s.tta, "--batch-size", str(s.batch_size),
                "--log-level", s.log_level]
        if s.model:
            args += ["--model", s.model]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        if rows is not None and cols is not None:
            args += ["--rows", str(rows), "--cols", str(cols)]
        else:
            args.append("--no-register")
        return args


# Longer than a local clean-up (about 30 s) and an AWS one (up to 3 minutes).
TASK_LOCK_WAIT_S = 240


def failure_reason(log_path: Path, returncode: int, *, start: int = 0) -> str:
    """The pipeline's ERROR records (their messages name the fault and the fix), in order, else the
    exit status.

    Every record, not just the last: a failed group's reason comes before the run's summary that
    points at it ("errors above"), and the API's client cannot read the log above. Only the log
    from byte ``start`` on is searched: a task's log is appended to by every run, and a run that
    died without an ERROR record (killed) must not report the one before's.
    """
    return run_failure(log_path, returncode, start=start)[0]


def run_failure(log_path: Path, returncode: int, *, start: int = 0) -> tuple[str, str | None]:
    """:func:`failure_reason`, and why registration failed (None where it did not, or the log cannot be
    read), from one read of the run's log: the log may be megabytes, and the task waits for its outcome."""
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    try:
        tail = _log_tail(log_path, start)
    except OSError as exc:
        return f"the pipeline failed ({how}); its log {log_path} cannot be read: {exc}", None
    records = _error_records(tail)
    if records:
        reason = "\n".join(records)[:MAX_ERROR_CHARS]
    else:
        last = next((line for line in reversed(tail) if line.strip()), "")
        if _LOG_RECORD.match(last):
            # Where the run was when it died (a progress line, a warning) says nothing a client can act
            # on, and may name the server's folders (a worker's log, a tile plan): the line of a
            # traceback or of stderr is kept.
            last = ""
        reason = f"the pipeline failed ({how}){': ' + last[:MAX_ERROR_CHARS] if last else ''}"
    return reason, _registration_reasons(records)


# What registration's reason says when the mask holds too few marks (am.register.registration._too_few_marks).
_TOO_FEW_MARKS = ("no mark to register", "not separate marks", "are needed to fit a grid")


def api_words(reason: str) -> str:
    """Registration's reason as an API client reads it: the query's rows and cols, not --rows/--cols;
    the scale is the server's to set; no advice that only the command line can follow."""
    reason = without_pipeline_advice(reason)
    return (reason.replace("--rows/--cols", "rows and cols").replace("--rows", "rows").replace("--cols", "cols")
            .replace("rerun python -m am.pipeline with --scale", "--scale")
            .replace("--scale", "the server's --scale"))


def _registration_reasons(records: list[str]) -> str | None:
    """Why the task's image could not be numbered, from the pipeline's record for its group; None
    where the run failed otherwise. The run's other records then add only the command line's advice
    (rerun with other --rows/--cols, look at the overlay), which an API client cannot follow."""
    prefix = f"group {GROUP}: registration failed: "
    reasons = [record[len(prefix):] for record in records if record.startswith(prefix)]
    return "\n".join(reasons)[:MAX_ERROR_CHARS] if reasons else None


def _log_tail(log_path: Path, start: int) -> list[str]:
    with open(log_path, "rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(start, handle.tell() - LOG_TAIL_BYTES))
        return handle.read().decode("utf-8", errors="replace").splitlines()


def _error_records(tail: list[str]) -> list[str]:
    records = []
    for index, line in enumerate(tail):
        match = _ERROR_LINE.match(line)
        if match:
            # A record may continue on the following lines (e.g. the workers' last log lines).
            rest = []
            for following in tail[index + 1:]:
                if re.match(r"^\d\d:\d\d:\d\d ", following):
                    break
                rest.append(following)
            records.append("\n".join([match.group(2), *rest]).strip())
    return records


class TaskRunner:
    """A pool of ``concurrency`` threads; each takes a task id from the queue and runs its pipeline."""

    def __init__(
        self,
        store: TaskStore,
        command: PipelineCommand,
        *,
        concurrency: int = 1,
        environ: Mapping[str, str] | None = None,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._store = store
        self._command = command
        self._concurrency = concurrency
        self._environ = dict(environ or {})
        self._stop_grace_s = stop_grace_s
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        # Every id is in at most one of _queued (submitted, not yet taken) and _active (taken by a
        # thread, until it is done with it); _cancelled holds only ids of either, so it stays small.
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._cancelled: set[str] = set()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        # Outcomes that could not be written to task.json, written again before the next task starts.
        self._unrecorded: dict[str, dict[str, object]] = {}
        self._deaths: list[str] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"queued": len(self._queued - self._cancelled), "running": len(self._procs)}

    def problem(self) -> str | None:
        """Why tasks can no longer run (a runner thread died), or None while the runner is healthy."""
        with self._lock:
            if self._stopping:
                return None
            dead = [thread.name for thread in self._threads if not thread.is_alive()]
            deaths = list(self._deaths)
        if not dead:
            return None
        why = f": {'; '.join(deaths)}" if deaths else ""
        return (f"{len(dead)} of {self._concurrency} task runner thread(s) stopped ({', '.join(dead)}){why}; "
                "queued tasks may never run: restart the server (finished work is kept, unfinished tasks resume)")

    def start(self) -> None:
        """Re-queue what a previous server left unfinished (oldest first), then start the threads."""
        for task in self._store.all():
            if task.status in (QUEUED, RUNNING):
                if task.status == RUNNING:
                    self._store.update(task.id, status=QUEUED)
                log.info("task %s was %s when the server last stopped; queued again", task.id, task.status)
                self.submit(task.id)
        for number in range(self._concurrency):
            thread = threading.Thread(target=self._thread_main, name=f"am-api-runner-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, task_id: str) -> None:
        with self._lock:
            self._queued.add(task_id)
        self._queue.put(task_id)

    def cancel(self, task_id: str) -> None:
        """Make sure the task will not run (again); a running pipeline is stopped and waited for."""
        with self._lock:
            # Remembered only while the id is queued or being run: a finished task needs nothing stopped.
            if task_id in self._queued or task_id in self._active:
                self._cancelled.add(task_id)
            self._unrecorded.pop(task_id, None)
            proc = self._procs.get(task_id)
        if proc is not None:
            log.info("task %s: stopping its pipeline (pid %d)", task_id, proc.pid)
            self._terminate(proc)

    def stop(self) -> None:
        """Stop every running pipeline; their tasks are set back to QUEUED and resume on the next start."""
        with self._lock:
            self._stopping = True
            procs = list(self._procs.values())
        for proc in procs:
            self._terminate(proc)
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=self._stop_grace_s)
        self._threads.clear()

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=self._stop_grace_s)
        except subprocess.TimeoutExpired:
            log.warning("pipeline pid %d did not stop within %.0f s of SIGTERM; killing it", proc.pid,
                        self._stop_grace_s)
            proc.kill()
            proc.wait()

    def _thread_main(self) -> None:
        """A runner thread; should it die all the same, the reason is kept for :meth:`problem`."""
        try:
            self._loop()
        except BaseException as exc:
            log.critical("task runner thread %s died; no more tasks run on it", threading.current_thread().name,
                         exc_info=True)
            with self._lock:
                self._deaths.append(f"{threading.current_thread().name}: {type(exc).__name__}: {exc}")

    def _loop(self) -> None:
        while True:
            task_id = self._queue.get()
            if task_id is None:
                return
            self._record_unrecorded()
            with self._lock:
                self._queued.discard(task_id)
                if task_id in self._cancelled:
                    # Deleted while queued: dropped here, so its id is not remembered any longer.
                    self._cancelled.discard(task_id)
                    continue
                self._active.add(task_id)
            try:
                self._run(task_id)
            except Exception as exc:
                # One task's failure, whatever it is, must not stop the thread that runs every later task.
                log.exception("task %s could not be run", task_id)
                what = str(exc) if isinstance(exc, (AmError, OSError)) else f"{type(exc).__name__}: {exc}"
                self._record(task_id, status=FAILED, error=f"the server could not run this task: {what}")
            finally:
                with self._lock:
                    self._active.discard(task_id)
                    self._cancelled.discard(task_id)

    @property
    def scale(self) -> float:
        """The factor the tasks' images are segmented at, as far as it is known before one is read."""
        return nominal_scale(self._command.settings)

    def _claim(self, task_id: str) -> int | None:
        """Mark the task RUNNING and start its pipeline, unless it was deleted, cancelled or is not queued.

        Returns where this run's part of the task's log starts, or None when the task is not run.
        """
        with self._lock:
            if self._stopping or task_id in self._cancelled:
                return None
            try:
                task = self._store.get(task_id)
            except UnknownTask:
                return None
            except DamagedTask as exc:
                log.error("not running task %s: %s", task_id, exc)
                return None
            if task.status != QUEUED:
                log.warning("task %s is %s, not QUEUED; not running it again", task_id, task.status)
                return None
            task = self._store.update(task_id, status=RUNNING, error=None)
            argv = self._command.argv(self._store.task_dir(task_id), rows=task.rows, cols=task.cols)
            log.info("task %s: running %s", task_id, " ".join(argv))
            # The run's summary (stdout) is kept apart from its log: failure_reason reads the log's
            # records with the lines that follow them, and the summary would read as part of them.
            with open(self._store.log_path(task_id), "ab") as log_file, \
                    open(self._store.summary_path(task_id), "ab") as summary_file:
                log_start = os.fstat(log_file.fileno()).st_size
                self._procs[task_id] = subprocess.Popen(
                    argv, env=self._environ, stdin=subprocess.DEVNULL, stdout=summary_file, stderr=log_file,
                    start_new_session=True, preexec_fn=die_with_parent,
                )
            return log_start

    def _run(self, task_id: str) -> None:
        log_start = self._claim(task_id)
        if log_start is None:
            return
        try:
            returncode = self._procs[task_id].wait()
        finally:
            with self._lock:
                del self._procs[task_id]
        with self._lock:
            if task_id in self._cancelled:
                return
            if self._stopping:
                self._store.update(task_id, status=QUEUED)
                log.info("task %s interrupted by the server stopping; it resumes when the server starts", task_id)
                return
        if returncode == 0:
            try:
                exported = self._export_mask(task_id)
            except (AmError, OSError) as exc:
                self._record(task_id, status=FAILED, error=f"the stitched mask cannot be served: {exc}")
                return
            if exported:
                self._record(task_id, status=FINISHED, error=None)
                log.info("task %s finished", task_id)
        else:
            reason, registration = run_failure(self._store.log_path(task_id), returncode, start=log_start)
            log.warning("task %s failed: %s", task_id, reason.splitlines()[0] if reason else returncode)
            # The client knows its task, not the server's folders.
            task_dir = str(self._store.task_dir(task_id))
            reason = without_pipeline_advice(reason.replace(f"{task_dir}/", "").replace(task_dir, "the task"))
            if registration is not None and self._store.layout(task_id).stitched_mask(GROUP).is_file():
                # Registration failed after the mask was stitched (rows and cols that do not fit): the
                # mask is still the client's, and the advice is the API's, not the command line's.
                reason = f"registration failed: {api_words(registration)}"
                try:
                    self._export_mask(task_id)
                except (AmError, OSError) as exc:
                    log.warning("task %s: its stitched mask cannot be served: %s", task_id, exc)
                else:
                    # The overlay shows the marks found: the rows and cols they form, or that they are missed.
                    shown = (f"; GET /overlays/{task_id} draws it over the image"
                             if self._store.layout(task_id).stitched_overlay(GROUP).is_file() else "")
                    reason += f"\nThe mask was made: GET /masks/{task_id}{shown}. " + (
                        "It holds too few marks to number: check that the image shows the ablation marks."
                        if any(words in registration for words in _TOO_FEW_MARKS) else
                        "If rows and cols were not those of the acquisition grid, submit the image again with "
                        "the right ones.")
            self._record(task_id, status=FAILED, error=reason)

    def _export_mask(self, task_id: str) -> bool:
        """Keep a PNG copy of the stitched mask, so GET /masks/<id> sends a file instead of encoding per request.

        Returns False, writing nothing, when the task was deleted meanwhile: reading and encoding a
        large mask takes seconds, and a write must not bring back a deleted task's folder.
        """
        data = encode_png(read_image(self._store.layout(task_id).stitched_mask(GROUP)))
        target = self._store.mask_png(task_id)
        # DELETE cancels (under this lock) before it removes the folder, so under the lock a task
        # not cancelled still has its folder; mkdir without parents makes sure of it all the same.
        with self._lock:
            if task_id in self._cancelled:
                log.info("task %s was deleted while its mask was exported; nothing written", task_id)
                return False
            target.parent.mkdir(exist_ok=True)
            write_atomic(target, data)
        return True

    def _record(self, task_id: str, **changes: object) -> None:
        """Write the task's outcome; a failure to write is logged and retried before the next task, not raised."""
        with self._lock:
            if task_id in self._cancelled:
                return
            try:
                self._store.update(task_id, **changes)
            except UnknownTask:
                log.info("task %s was deleted before its outcome could be recorded", task_id)
            except Exception:
                # task.json still says RUNNING: retried below; were it never written, the task runs again
                # when the server next starts.
                log.exception("task %s: cannot record its outcome (%s) in %s; trying again before the next task",
                              task_id, changes.get("status"), self._store.task_dir(task_id))
                self._unrecorded[task_id] = changes
                return
            self._unrecorded.pop(task_id, None)

    def _record_unrecorded(self) -> None:
        with self._lock:
            pending = list(self._unrecorded.items())
        for task_id, changes in pending:
            log.info("task %s: recording its outcome (%s) again", task_id, changes.get("status"))
            self._record(task_id, **changes)


__all__ = ["PipelineCommand", "TaskRunner", "failure_reason", "run_failure"]
