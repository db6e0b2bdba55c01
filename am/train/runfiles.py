"""The files a training run keeps beside its checkpoint, and how they are written and read back.

``m.pt`` gets ``m.resume`` (everything a stopped run needs to go on), ``m.metrics.csv`` (a row per
epoch) and ``m.metrics.json`` (the run's summary and options). Each is written atomically, so a
run killed mid-write leaves the previous epoch's file, never half of one. While a run writes them
it holds ``m.lock`` (:func:`run_lock`), so that a second run given the same ``--out`` is refused.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import logging
import os
import pickle
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from am.cli import describe_os_error
from am.dataset_lock import NO_LOCKS, holder_of, holder_record
from am.errors import CheckpointError, InputError
from am.files import atomic_output, write_atomic
from am.model.checkpoint import save_torch_file

log = logging.getLogger(__name__)

STATE_FORMAT = "am-segm-train-state"
# How a torch zip archive, and so every resume state am.train writes, begins.
_ZIP_SIGNATURE = b"PK\x03\x04"


def state_path(out: Path) -> Path:
    """Resume state beside the checkpoint (``m.pt`` -> ``m.resume``); not ``*.pt``, so it is never packaged
    with the models."""
    return _beside(out, ".resume")


def metrics_path(out: Path) -> Path:
    """One CSV row per epoch, beside the checkpoint (``m.pt`` -> ``m.metrics.csv``)."""
    return _beside(out, ".metrics.csv")


def record_path(out: Path) -> Path:
    """The run's summary (best epoch, history, whether it finished), rewritten after every epoch."""
    return _beside(out, ".metrics.json")


def lock_path(out: Path) -> Path:
    """The lock a run writing ``out`` holds (``m.pt`` -> ``m.lock``), which names it while it runs."""
    return _beside(out, ".lock")


def run_outputs(out: Path) -> tuple[Path, ...]:
    """What a run writing ``out`` leaves there: the checkpoint, its metrics log and summary, and its resume state."""
    return Path(out), metrics_path(out), record_path(out), state_path(out)


@contextmanager
def run_lock(out: Path, *, command: str = "am.train") -> Iterator[None]:
    """Hold the lock of the run writing ``out`` for the block; InputError naming the holder if another run has it.

    Two runs with one ``--out`` would overwrite each other's checkpoint, metrics and resume state
    epoch by epoch, and neither would say so. The lock is an ``flock`` on ``OUT.lock``, which the
    kernel lets go however the holder ends (a killed run leaves nothing held). The file records
    ``command``, this process's id, host and start time for the message a second run gets
    (:func:`am.dataset_lock.holder_of` reads it), and is removed when the run ends; it is opened
    never through a symbolic link. A lock taken on a file its holder removed meanwhile is taken again
    on the file now there, so two runs never both hold a lock, each on another file.
    """
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = _open_lock(path)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise InputError(f"--out {out} is being written by another run ({holder_of(path)}, holding {path}): "
                             "two runs with one --out would overwrite each other's checkpoint and resume state; wait "
                             "for it to end or stop it, or give another --out") from None
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                os.close(descriptor)
                raise
            log.warning("the file system of %s cannot lock files (%s): make sure no other run writes --out %s "
                        "meanwhile", path, os.strerror(exc.errno), out)
            break
        if _names(path, descriptor):
            break
        os.close(descriptor)  # its holder removed it when it ended: lock the file now there
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, holder_record(command).encode(), 0)
        yield
    finally:
        try:
            if _names(path, descriptor):
                try:
                    path.unlink()  # removed while still held: a run that opened it meanwhile sees it gone and retries
                except OSError as exc:  # the run's own outcome (or its Ctrl-C) is what the user must see
                    log.warning("could not remove the run's lock %s (%s); remove it by hand once no run uses "
                                "--out %s", path, exc.strerror, out)
        finally:
            os.close(descriptor)


def _open_lock(path: Path) -> int:
    """``path`` opened for the lock: a regular file, never through a link (InputError otherwise)."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path} is a symbolic link, which the run's lock is never taken through; remove it "
                             "and rerun") from None
        raise InputError(f"cannot open the run's lock {path} ({os.strerror(exc.errno or 0)}); --out must be in a "
                         "folder this user may write") from exc
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise InputError(f"{path} is not a regular file, so the run's lock cannot be taken there; remove it and rerun")
    return descriptor


def _names(path: Path, descriptor: int) -> bool:
    """Whether ``path`` is still the file open as ``descriptor`` (not removed or replaced since)."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _beside(out: Path, suffix: str) -> Path:
    """``out`` with a ``.pt`` suffix replaced by ``suffix``, and any other name extended by it.

    Replacing whatever follows the last dot would give ``runs/lr0.5`` and ``runs/lr0.7`` one resume
    state and one log between them, and make ``--out m.resume`` its own resume state.
    """
    out = Path(out)
    stem = out.name[:-3] if out.name.endswith(".pt") and len(out.name) > 3 else out.name
    return out.with_name(stem + suffix)


def write_csv(path: Path, history: list[dict[str, float]]) -> None:
    """The metrics log, one row per epoch of ``history``, rewritten whole and atomically: a run
    stopped between this and its resume state keeps no row the resumed run writes again."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_atomic(path, text.getvalue().encode("utf-8"))


def save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                scaler: torch.amp.GradScaler, **extra: Any) -> None:
    """Everything a resumed run needs to go on as if never stopped, written atomically."""
    payload = {"format": STATE_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "scaler": plain(scaler.state_dict()), **plain(extra)}
    with atomic_output(path) as handle:
        save_torch_file(payload, handle, path)  # a full disk is an OSError naming the state, not torch's RuntimeError


def write_record(out: Path, *, epochs: int, options: dict[str, Any], arithmetic: str, best_epoch: int,
                 best_metrics: dict[str, float], history: list[dict[str, float]]) -> None:
    """The run's summary, rewritten after every epoch so that it always describes the files beside it.

    ``options`` are the run's training options (what a resume must match), ``arithmetic`` the
    precision its validation scored in.
    """
    record = {"best_epoch": best_epoch, "best": best_metrics, "history": history, "epochs": epochs,
              "finished": len(history) == epochs, "validation_arithmetic": arithmetic, "options": options}
    write_atomic(record_path(out), json.dumps(plain(record), indent=1).encode())


def read_record(out: Path) -> dict[str, Any] | None:
    """The summary of the run that wrote ``out``, or None where there is none that can be read."""
    path = record_path(out)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s); treating %s as having no finished run", path, exc, out)
        return None
    return record if isinstance(record, dict) and isinstance(record.get("history"), list) else None


def load_state(path: Path) -> dict[str, Any]:
    """Read a resume state with ``weights_only=True``; a file that is not one stops the run, not resumes it wrongly.

    The error says in one line what the file is (empty, not a resume state, truncated or damaged)
    and what to do. torch's own text is not passed on: it runs to many lines and, for a file
    safe loading refuses, suggests loading it with ``weights_only=False``, which would run
    whatever code the file holds. A file that cannot be opened at all (permissions, a vanished
    disk) is said to be so, as the command line says of any OSError: am.train checks a state
    before its errors become exit codes.
    """
    try:
        with Path(path).open("rb") as handle:
            head = handle.read(len(_ZIP_SIGNATURE))
        if not head:
            raise CheckpointError(_unusable_state(path, "is empty"))
        if head != _ZIP_SIGNATURE:  # every state am.train writes is a torch zip archive
            raise CheckpointError(_unusable_state(path, f"is not a resume state of am.train (it starts {head!r})"))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"--resume: {describe_os_error(exc)}") from exc
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc):  # a pickle cut short or changed
            raise CheckpointError(_unusable_state(path, "is truncated or damaged")) from exc
        # Objects safe loading refuses: whatever the file is, it is not a state am.train wrote.
        raise CheckpointError(_unusable_state(path, "is not a resume state of am.train (it holds objects "
                                                    "safe loading refuses)")) from exc
    except Exception as exc:  # torch raises many types for a zip cut short or changed; all mean "damaged"
        raise CheckpointError(_unusable_state(path, "is truncated or damaged")) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(_unusable_state(path, "is not a resume state of am.train (another torch file)"))
    return state


def _unusable_state(path: Path, what: str) -> str:
    """The one line for a resume state that cannot be resumed from: what it is, and the ways on.

    A new run refuses an --out whose run files are still there, so starting afresh means moving
    them all, not only the state.
    """
    return (f"--resume: {path} {what}, so the run cannot be continued from it: to start afresh, drop --resume and "
            "move or delete it and the run's other files beside it (checkpoint, metrics), or give another --out")


def plain(value: Any) -> Any:
    """Turn tuples, paths and numpy scalars into plain types that ``weights_only`` loading accepts."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
