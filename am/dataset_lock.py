"""One run at a time per dataset: the lock that keeps two runs from removing each other's outputs.

A run removes and rewrites a group's tiles, stitched mask and ids as it goes. A second run
started on the same dataset meanwhile (a second terminal, a cron job firing again) would delete
the first one's tiles under its workers and overwrite its results with a mix of both. Each run
holds an exclusive ``flock`` on the dataset folder itself while it works, so the second one is
refused at once; the kernel lets the lock go when the holder exits, however it exits, so a killed
run leaves nothing to clean up.

The folder, not a file in it, is what is locked: every run can open the folder, whether or not it
may write there, and nobody can swap it for another inode under a running run (a lock file
deleted or replaced meanwhile would let a second run lock a new file and go ahead). The holder
records who it is in ``DATASET/.am-segm.lock`` where it may write, for the message the second run
gets; that file is only a note, written only when it is a regular file (never through a link), and
believed only while the process it names is still alive.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from am.errors import InputError

log = logging.getLogger(__name__)

LOCK_NAME = ".am-segm.lock"
# Where the file system offers no locks (some network mounts), the run goes on unguarded, and says so.
# (EBADF: NFS takes an exclusive lock only on a file opened for writing, so never on a folder.)
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF)
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
# How often a run told to wait for the lock tries again.
_WAIT_STEP_S = 0.5
# What the refused run says when the holder left no record it can believe.
UNRECORDED = "holder not recorded"
# The record: "<command>, pid <pid> on <host>, since <time>".
_RECORD_MAX_BYTES = 500


def _take(descriptor: int, dataset: Path, wait_s: float, what: str, record: Path) -> None:
    """flock the descriptor, trying again for up to ``wait_s``; BlockingIOError if it stays held."""
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            if not said:
                said = True
                log.info("%s %s is in use by another run (%s); waiting up to %g s for it to end", what, dataset,
                         holder_of(record), wait_s)
            time.sleep(min(_WAIT_STEP_S, max(0.0, deadline - time.monotonic())))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive all the same
        return True
    return True


def holder_record(command: str) -> str:
    """What a lock's holder writes of itself: ``command``, this process's id, host and start time, in the form
    :func:`holder_of` reads back."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"{command}, pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n"


def holder_of(record: Path) -> str:
    """Who holds the lock, as the record says; :data:`UNRECORDED` when it says nothing believable.

    The record may be an earlier run's: a holder that could not write it (a read-only dataset)
    leaves the previous text in place. A holder clears its record when it lets the lock go, so
    only a killed run leaves one behind, and its process is gone: a record naming a process of
    this host that is no longer running is ignored. One from another host cannot be checked here.
    """
    try:
        descriptor = os.open(record, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return UNRECORDED
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return UNRECORDED
        text = os.pread(descriptor, _RECORD_MAX_BYTES, 0).decode("utf-8", "replace").strip()
    except OSError:
        return UNRECORDED
    finally:
        os.close(descriptor)
    try:
        _, rest = text.split(", pid ", 1)
        pid_text, rest = rest.split(" on ", 1)
        host = rest.split(", since ", 1)[0]
        pid = int(pid_text)
    except ValueError:
        return UNRECORDED
    if host == socket.gethostname() and not _pid_alive(pid):
        return UNRECORDED
    return text


def _open_record(record: Path) -> int | None:
    """The record file opened for writing, or None where it cannot (or must not) be written.

    Never through a symbolic link, and only a regular file: anything else in its place (a link
    to a file elsewhere, a FIFO) is left alone, so taking the lock cannot change any other file.
    """
    try:
        # 0o666 less the umask: another user of a shared dataset must be able to record itself too.
        descriptor = os.open(record, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            log.warning("%s is a symbolic link, which is never written through: the lock holds, but this run is "
                        "not named in it; remove the link", record)
        elif exc.errno in _READ_ONLY:
            log.debug("cannot record this run's name in %s: %s", record, os.strerror(exc.errno))
        else:
            log.warning("cannot record this run's name in %s (%s); the lock holds all the same", record,
                        os.strerror(exc.errno or 0))
        return None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        log.warning("%s is not a regular file, so this run is not named in it (the lock holds all the same); "
                    "remove it", record)
        return None
    return descriptor


def _write_record(descriptor: int, text: str) -> None:
    """Replace the record's text (clear it with ""); a failure is logged: the record is only a note."""
    try:
        os.ftruncate(descriptor, 0)
        if text:
            os.pwrite(descriptor, text.encode(), 0)
    except OSError as exc:
        log.warning("cannot update the lock's record of who holds it (%s); the lock holds all the same",
                    os.strerror(exc.errno or 0))


@contextmanager
def dataset_lock(dataset: Path, *, command: str, wait_s: float = 0.0, what: str = "dataset") -> Iterator[None]:
    """Hold ``dataset``'s lock for the block; InputError naming the holder if another run has it.

    ``command`` (such as ``am.pipeline``) is recorded in ``dataset/.am-segm.lock`` with this
    process's id, host and start time, for the message a second run gets. ``wait_s`` waits that
    long for a holder to finish first (the task server's restarted run, while the one its previous
    life started still cleans up), saying once that it waits. ``what`` is what messages call the
    folder (an output folder, for a command whose folder is no dataset).
    """
    dataset = Path(dataset)
    record = dataset / LOCK_NAME
    try:
        # A lock needs no write access: a run that may not write the dataset's root still takes it.
        descriptor = os.open(dataset, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise
        log.warning("no lock on %s (%s): make sure no other run uses this %s meanwhile", dataset,
                    os.strerror(exc.errno), what)
        yield
        return
    writer: int | None = None
    try:
        try:
            _take(descriptor, dataset, wait_s, what, record)
        except BlockingIOError:
            _refuse(dataset, what, wait_s, record)
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                raise
            # NFS locks only files opened for writing: every run there that may write locks the record
            # file instead (the same inode for all of them); one that may not goes on unguarded.
            writer = _open_record(record)
            try:
                locked = writer is not None and _take_file(writer, dataset, wait_s, what, record)
            except OSError as lock_error:
                # Not this run's record to clear: another run holds it (BlockingIOError), or no lock was taken.
                os.close(writer)
                writer = None
                if isinstance(lock_error, BlockingIOError):
                    _refuse(dataset, what, wait_s, record)
                raise
            if not locked:
                log.warning("the file system of %s cannot lock files (%s): make sure no other run uses this %s "
                            "meanwhile", dataset, os.strerror(exc.errno), what)
        else:
            writer = _open_record(record)
        if writer is not None:
            _write_record(writer, holder_record(command))
        yield
    finally:
        try:
            if writer is not None:
                # Cleared before the lock goes: a later holder that cannot write must not seem to be this run.
                _write_record(writer, "")
                os.close(writer)
        finally:
            os.close(descriptor)  # lets the lock go


def _take_file(writer: int, dataset: Path, wait_s: float, what: str, record: Path) -> bool:
    """Lock the record file where the folder cannot be locked; False where files cannot be locked either.

    BlockingIOError where another run holds it; any other failure but a missing lock service is raised.
    """
    try:
        _take(writer, dataset, wait_s, what, record)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno not in NO_LOCKS:
            raise
        return False
    return True


def _refuse(dataset: Path, what: str, wait_s: float, record: Path) -> NoReturn:
    """The InputError of a run that found the lock held: who holds it, where that is known, and what to do."""
    waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
    raise InputError(f"{what} {dataset} is in use by another run ({holder_of(record)}){waited}; wait for it "
                     "to end, or stop it, then rerun") from None
