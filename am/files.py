"""Atomic file output: readers (and reruns after a crash) never see half a file.

Every file am-segm writes into a dataset, and every object it downloads, goes through here::

    write_atomic(path, data)
    with atomic_output(path) as handle:
        tifffile.imwrite(handle, image)

Output made of many files (a synthetic dataset, a pseudo-labelling run) is built in a staging
folder and swapped in whole, so that a run failing half-way neither leaves half its output nor
has deleted the previous run's::

    with staging(root / ".synth.partial") as stage:
        write_png(stage / "source" / "0000.png", image)
        swap_in(stage / "source", root / "source")

:func:`file_sha256` is how a file's identity is recorded (an input image, a model), so that a
rerun reuses work only for the very same bytes.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 1 << 20
# The name of atomic_output's temporary file beside ``NAME``: ``.NAME.<32 hex digits>.tmp``.
_TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")
# Errors a write raises about the disk without naming a file: named after the output they stopped. Any other
# error without a file (a network error from the chunks a download streams in) is no fault of the output.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in chunks so a large image never sits in memory twice."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _temporary(path: Path) -> Path:
    """Where :func:`atomic_output` writes ``path`` first (:data:`_TEMPORARY_NAME`)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


@contextmanager
def atomic_output(path: Path) -> Iterator[IO[bytes]]:
    """A new temporary file beside ``path``, synced and renamed over ``path`` only if the block succeeds.

    An OSError about the temporary file, or a disk's error about no file at all (a full disk while
    writing), is raised again naming ``path``: the temporary name means nothing to the user, and a bare "No
    space left on device" does not say which output failed. A process killed while writing leaves
    its temporary file behind; :func:`remove_leftover_temporaries` clears them on a later run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        # Exclusive create with default permissions (the umask decides, as for any ordinary file).
        with tmp.open("xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError as removing:
            log.warning("could not remove the unfinished %s: %s", tmp, removing.strerror)
        if isinstance(exc, OSError) and exc.errno is not None and (
                exc.filename == str(tmp) or (exc.filename is None and exc.errno in _DISK_ERRNOS)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def remove_leftover_temporaries(folder: Path) -> int:
    """Delete the temporary files of :func:`atomic_output` left in ``folder``; returns how many.

    A process killed while writing (kill -9, a power cut) cannot remove its temporary file, and
    nothing else would: they would pile up in a folder that reruns keep and reuse. Only files named
    as :func:`atomic_output` names them are touched, never a link. The caller makes sure nothing can
    be writing there meanwhile (for a dataset: its run lock is held, and no job is running).
    """
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    for entry in entries:
        if _TEMPORARY_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                Path(entry.path).unlink(missing_ok=True)
            except OSError as exc:  # only litter: the run goes on, and the next one tries again
                log.warning("could not remove %s, an unfinished file a run stopped while writing: %s", entry.path,
                            exc.strerror)
                continue
            removed += 1
    if removed:
        log.info("removed %d unfinished file(s) from %s, left by a run stopped while writing them", removed, folder)
    return removed


def write_atomic(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write bytes, or an iterable of chunks (a streamed download), to ``path`` atomically."""
    with atomic_output(path) as handle:
        if isinstance(data, (bytes, bytearray, memoryview)):
            handle.write(data)
        else:
            for chunk in data:
                handle.write(chunk)


def check_writable(folder: Path) -> None:
    """Raise the OSError a write into the existing ``folder`` would, naming ``folder``, before any work starts.

    A dataset on a read-only mount, or owned by another user, would otherwise fail only at its
    first output file, after the backend and its workers have started. Permission bits alone do
    not tell (root ignores them; mounts and ACLs do not show in them), so a real file is made.
    """
    folder = Path(folder)
    try:
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".am-write-check.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from exc
    os.close(descriptor)
    os.unlink(probe)


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest ancestor that does: where it would be made.

    An output that does not exist yet is created inside that folder, so that folder's
    permissions (not the missing path's) decide whether the output can be written.
    """
    path = Path(path)
    return next((p for p in (path, *path.parents) if p.exists()), path)


def check_can_replace(folders: Iterable[Path]) -> None:
    """Raise the OSError (naming the folder) that making or replacing any of ``folders`` would meet.

    Outputs are staged beside the folder they replace, so each folder is written in and so is the
    one holding it; where either does not exist yet, its nearest existing ancestor, where it will
    be made. Each place is checked once (:func:`check_writable` makes a real file).
    """
    places: dict[Path, None] = {}
    for folder in folders:
        for path in (Path(folder), Path(folder).parent):
            places[nearest_existing(path)] = None
    for place in places:
        if not place.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(place))
        check_writable(place)


@contextmanager
def staging(folder: Path) -> Iterator[Path]:
    """A fresh, empty ``folder`` to write into, removed when the block ends, whether or not it succeeded.

    A leftover from an interrupted earlier run is removed first: it only ever holds unfinished output.
    """
    folder = Path(folder)
    if folder.exists():
        log.info("removing %s, left by an unfinished earlier run", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def swap_in(staged: Path, target: Path) -> None:
    """Replace ``target`` (if any) by the folder ``staged``, deleting the old one only once the new is in place.

    The old output waits beside the staging folder as ``<staged>.old``. One left there by a run
    stopped while deleting it is removed first: it would block every later swap. A ``target``
    that is a symbolic link (output kept on another disk) is replaced as a link: the folder it
    points to is left alone, never deleted through the link.
    """
    staged, target = Path(staged), Path(target)
    old = staged.with_name(staged.name + ".old")
    if os.path.lexists(old):
        log.info("removing %s, the previous output of a run that stopped before deleting it", old)
        _remove(old)
    had_old = os.path.lexists(target)
    if had_old:
        target.rename(old)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(target)
    except BaseException:
        if had_old:
            old.rename(target)  # put the previous output back before reporting the failure
        raise
    if had_old:
        _remove(old)


def _remove(path: Path) -> None:
    """Delete ``path``: a link or a file itself, a folder with everything in it."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def clear_output(path: Path) -> None:
    """Remove an output folder's contents for good, the folder with them; one reached through a
    symbolic link (kept on another disk) is emptied there and the link stays, so the next output
    goes where the user put it. A file in its place, or a broken link, is removed."""
    path = Path(path)
    if path.is_symlink() and path.is_dir():
        for entry in path.resolve().iterdir():  # the folder pointed to stays: the link must not dangle
            _remove(entry)
    elif os.path.lexists(path):
        _remove(path)
