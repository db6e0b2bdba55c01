"""One run at a time per dataset: the lock that keeps two runs from removing each other's outputs.

A run removes and rewrites a group's tiles, stitched mask and ids as it goes. A second run
started on the same dataset meanwhile (a second terminal, a cron job firing again) would delete
the first one's tiles under its workers and overwrite its results with a mix of both. Each run
holds an exclusive ``flock`` on ``DATASET/.am-segm.lock`` while it works, so the second one is
refused at once, naming the first; the kernel lets the lock go when the holder exits, however it
exits, so a killed run leaves nothing to clean up.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from am.errors import InputError

log = logging.getLogger(__name__)

LOCK_NAME = ".am-segm.lock"
# Where the file system offers no locks (some network mounts), the run goes on unguarded, and says so.
# (EBADF: NFS takes an exclusive lock only on a file opened for writing.)
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF)
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
# How often a run told to wait for the lock tries again.
_WAIT_STEP_S = 0.5


def _take(descriptor: int, dataset: Path, wait_s: float, what: str) -> None:
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
                         _holder(descriptor) or "unnamed", wait_s)
            time.sleep(min(_WAIT_STEP_S, max(0.0, deadline - time.monotonic())))


def _holder(descriptor: int) -> str:
    """What the holder wrote in the lock file ("" from a folder's descriptor, or an unnamed holder)."""
    try:
        return os.pread(descriptor, 500, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


@contextmanager
def dataset_lock(dataset: Path, *, command: str, wait_s: float = 0.0, what: str = "dataset") -> Iterator[None]:
    """Hold ``dataset``'s lock for the block; InputError naming the holder if another run has it.

    ``command`` (such as ``am.pipeline``) is written into the lock file with this process's id,
    host and start time, for the message a second run gets. ``wait_s`` waits that long for a
    holder to finish first (the task server's restarted run, while the one its previous life
    started still cleans up), saying once that it waits. ``what`` is what messages call the folder
    (an output folder, for a command whose folder is no dataset).
    """
    path = Path(dataset) / LOCK_NAME
    try:
        # 0o666 less the umask: another user of a shared dataset must be able to take the lock too.
        descriptor, writable = os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise
        # A lock needs no write access (flock works on a file opened for reading): a run that may
        # not write the file, or the dataset's root, still takes it, only without its name in it.
        try:
            descriptor, writable = os.open(path if path.exists() else dataset, os.O_RDONLY), False
        except OSError:
            log.warning("no lock on %s (%s): make sure no other run uses this %s meanwhile", dataset,
                        os.strerror(exc.errno), what)
            yield
            return
    try:
        try:
            _take(descriptor, dataset, wait_s, what)
        except BlockingIOError:
            holder = _holder(descriptor) or "a run that has not said which"
            waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
            raise InputError(f"{what} {dataset} is in use by another run ({holder}){waited}; wait for it to end, "
                             "or stop it, then rerun") from None
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
            log.warning("the file system of %s cannot lock files (%s): make sure no other run uses this %s "
                        "meanwhile", dataset, os.strerror(exc.errno), what)
        else:
            if writable:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
                os.ftruncate(descriptor, 0)
                os.pwrite(descriptor, f"{command}, pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n"
                          .encode(), 0)
        yield
    finally:
        os.close(descriptor)  # lets the lock go
