"""Task state on disk: one dataset folder per submitted image, with its status beside it.

Each task is an ordinary am-segm dataset (one group, ``image``) plus ``task.json``, so the
pipeline runs on it unchanged, resumes finished tiles after a restart, and a person can open
the folder like any other dataset::

    <data_dir>/tasks/<id>/task.json                 status, progress, error, rows, cols, times
    <data_dir>/tasks/<id>/source/image/upload.png   the uploaded image (or upload.tiff)
    <data_dir>/tasks/<id>/tiles_stitched/image/...  results, as for any dataset
    <data_dir>/tasks/<id>/results/mask.png          the mask as served by GET /masks/<id>
    <data_dir>/tasks/<id>/pipeline.log              the pipeline's log for this task

``task.json`` is replaced atomically; a task folder appears by renaming a complete temporary
folder, so a crash never leaves half a task behind::

    store = TaskStore(Path("api-data"))
    task = store.create(upload_path, rows=50, cols=50)
    store.update(task.id, status=RUNNING)
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from am.dataset import DatasetLayout
from am.errors import AmError, ConfigError, InputError
from am.files import write_atomic

log = logging.getLogger(__name__)

QUEUED = "QUEUED"
RUNNING = "RUNNING"
FINISHED = "FINISHED"
FAILED = "FAILED"
STATUSES = (QUEUED, RUNNING, FINISHED, FAILED)
GROUP = "image"
TASK_FILE = "task.json"
# Held by the one server using a data folder (see TaskStore.exclusive).
LOCK_NAME = "server.lock"
TASK_VERSION = 1
# Times beyond this many seconds since the epoch (about 3000 years) are no time a server wrote; the
# bound also keeps a 400-digit number from reaching float arithmetic, which it overflows.
MAX_TIME_S = 1e11
_ID = re.compile(r"^[0-9a-f]{32}$")


class MalformedTaskId(InputError):
    """A task id that cannot be one this server issued (HTTP 400)."""


class UnknownTask(InputError):
    """A well-formed task id that names no task on this server (HTTP 404)."""


class DamagedTask(AmError):
    """A task whose record on disk cannot be read: the server's fault, not the client's (HTTP 500)."""


def check_task_id(task_id: str) -> str:
    """Ids are uuid4 hex (32 lower-case hex digits); anything else never reaches the file system."""
    # fullmatch: "$" would let a trailing newline through, and "<id>\n" reach the task <id>.
    if not _ID.fullmatch(task_id):
        raise MalformedTaskId(f"task id {task_id[:80]!r} is malformed: ids are 32 lower-case hex digits, "
                              "as returned in the Location header of POST /tasks")
    return task_id


def new_task_id() -> str:
    """A random id: task ids appear in URLs, so they must not be guessable from one another."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Task:
    """What ``task.json`` holds. Times are seconds since the epoch (UTC)."""

    id: str
    status: str
    created: float
    updated: float
    rows: int | None = None
    cols: int | None = None
    error: str | None = None
    version: int = TASK_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, task_id: str, source: str) -> Task:
        """The task ``text`` records; DamagedTask (naming the id, not the server's ``source`` file) if none.

        Bytes are decoded here, so that a record that is not UTF-8 is a damaged one too, and the
        fields' types are checked: a record read is shown, listed and run, and one odd value would
        fail each of those for every task listed with it.
        """
        try:
            data = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
            task = cls(**data)
            problem = task._problem() or (None if task.id == task_id else f"it records the id {task.id!r}")
        except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: brackets nested past the stack
            problem = str(exc) or type(exc).__name__
        if problem is not None:
            log.error("task file %s is not a valid task record: %s", source, problem)
            raise DamagedTask(f"task {task_id} has a damaged record on the server ({problem}); delete it "
                              f"(DELETE /tasks/{task_id}) and submit the image again")
        return task

    def _problem(self) -> str | None:
        """What in this record no server wrote, or None."""
        def number(value: object) -> bool:  # a time: seconds since the epoch
            return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < MAX_TIME_S

        def count(value: object) -> bool:
            return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)

        if self.status not in STATUSES or self.version != TASK_VERSION:
            return f"status {self.status!r}, version {self.version!r}"
        if not (isinstance(self.id, str) and number(self.created) and number(self.updated)
                and count(self.rows) and count(self.cols) and (self.error is None or isinstance(self.error, str))):
            return (f"id {self.id!r:.40}, created {self.created!r:.40}, updated {self.updated!r:.40}, rows "
                    f"{self.rows!r:.40}, cols {self.cols!r:.40}, error of type {type(self.error).__name__}")
        return None

    @property
    def register(self) -> bool:
        return self.rows is not None and self.cols is not None


class TaskStore:
    """All tasks under ``data_dir``; safe to use from the server's threads."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.tasks_dir = self.data_dir / "tasks"
        self.uploads_dir = self.data_dir / "uploads"
        self._lock = threading.RLock()
        self.tasks_dir.mkdir(parents=True, exist_ok=True)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold ``data_dir`` for this server while the block runs, or raise ConfigError naming it.

        A second server on the same folder would remove the first's uploads in flight and run its
        RUNNING tasks again, even if it then fails to bind its port (the app starts before that).
        The lock is the kernel's: it goes with the process, however that ends.
        """
        handle = open(self.data_dir / LOCK_NAME, "a+b")  # noqa: SIM115 (held for the block)
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"another am-segm server is using the data folder {self.data_dir}; give each "
                                  "server its own --data-dir (or stop the other one)") from None
            yield
        finally:
            handle.close()

    def clean_leftovers(self) -> None:
        """Remove uploads and half-made task folders left by a server that stopped mid-request."""
        for path in list(self.uploads_dir.iterdir()) + list(self.tasks_dir.glob(".*.tmp")):
            log.info("removing leftover %s", path)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def upload_path(self) -> Path:
        """A fresh path for an incoming body (the caller deletes it if the upload is refused)."""
        return self.uploads_dir / f"{uuid.uuid4().hex}.part"

    def task_dir(self, task_id: str) -> Path:
        return self.tasks_dir / check_task_id(task_id)

    def layout(self, task_id: str) -> DatasetLayout:
        return DatasetLayout(self.task_dir(task_id))

    def mask_png(self, task_id: str) -> Path:
        return self.task_dir(task_id) / "results" / "mask.png"

    def log_path(self, task_id: str) -> Path:
        return self.task_dir(task_id) / "pipeline.log"

    def summary_path(self, task_id: str) -> Path:
        """The run summaries the task's pipeline printed (its stdout), beside its log."""
        return self.task_dir(task_id) / "pipeline.summary"

    def create(self, image: Path, *, rows: int | None = None, cols: int | None = None) -> Task:
        """Move a checked upload into a new task folder and record it as QUEUED."""
        task_id = new_task_id()
        now = time.time()
        task = Task(id=task_id, status=QUEUED, created=now, updated=now, rows=rows, cols=cols)
        staging = Path(tempfile.mkdtemp(prefix=f".{task_id}.", suffix=".tmp", dir=self.tasks_dir))
        try:
            group_dir = staging / "source" / GROUP
            group_dir.mkdir(parents=True)
            os.replace(image, group_dir / f"upload{image.suffix}")
            write_atomic(staging / TASK_FILE, task.to_json().encode("utf-8"))
            os.replace(staging, self.task_dir(task_id))
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):  # a failed write names no file: the server's log should
                exc.filename = exc.filename or str(staging)
            raise
        log.info("task %s queued (rows %s, cols %s)", task_id, rows, cols)
        return task

    def get(self, task_id: str) -> Task:
        """The task's record; MalformedTaskId or UnknownTask if there is none to read."""
        path = self.task_dir(task_id) / TASK_FILE
        with self._lock:
            try:
                text = path.read_bytes()
            except FileNotFoundError:
                raise UnknownTask(f"task {task_id} does not exist on this server (never submitted, or deleted)") \
                    from None
        return Task.from_json(text, task_id=task_id, source=str(path))

    def update(self, task_id: str, **changes: Any) -> Task:
        with self._lock:
            task = dataclasses.replace(self.get(task_id), updated=time.time(), **changes)
            write_atomic(self.task_dir(task_id) / TASK_FILE, task.to_json().encode("utf-8"))
        return task

    def exists(self, task_id: str) -> bool:
        """Whether the task is there; ids are never issued twice, so a task found gone stays gone."""
        return (self.task_dir(task_id) / TASK_FILE).is_file()

    def delete(self, task_id: str) -> None:
        """Remove the task and everything it produced; UnknownTask if it is already gone."""
        with self._lock:
            folder = self.task_dir(task_id)
            if not self.exists(task_id):
                raise UnknownTask(f"task {task_id} does not exist on this server (never submitted, or deleted)")
            # Rename first, so a concurrent reader sees the task gone at once, not half removed.
            doomed = self.tasks_dir / f".{task_id}.deleted.tmp"
            os.replace(folder, doomed)
        shutil.rmtree(doomed)
        log.info("task %s deleted", task_id)

    def all(self) -> list[Task]:
        """Every readable task, oldest first; unreadable records are logged and left alone."""
        tasks = []
        for folder in self.tasks_dir.iterdir():
            if folder.name.startswith(".") or not _ID.fullmatch(folder.name):
                continue
            try:
                tasks.append(self.get(folder.name))
            except UnknownTask:
                continue  # deleted since the folder was listed
            except (DamagedTask, InputError) as exc:
                log.warning("skipping task folder %s: %s", folder, exc)
        return sorted(tasks, key=lambda t: (t.created, t.id))


__all__ = [
    "FAILED",
    "FINISHED",
    "QUEUED",
    "RUNNING",
    "STATUSES",
    "DamagedTask",
    "MalformedTaskId",
    "Task",
    "TaskStore",
    "UnknownTask",
    "check_task_id",
]
