"""The files a training run keeps beside its checkpoint, and how they are written and read back.

``m.pt`` gets ``m.resume`` (everything a stopped run needs to go on), ``m.metrics.csv`` (a row per
epoch) and ``m.metrics.json`` (the run's summary and options). Each is written atomically, so a
run killed mid-write leaves the previous epoch's file, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from am.errors import CheckpointError
from am.files import atomic_output, write_atomic

log = logging.getLogger(__name__)

STATE_FORMAT = "am-segm-train-state"


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
        torch.save(payload, handle)


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
    """Read a resume state with ``weights_only=True``; a file that is not one stops the run, not resumes it wrongly."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure means the file cannot be resumed from
        raise CheckpointError(f"resume state {path} cannot be read ({exc}); delete it to start afresh") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training resume state; delete it to start afresh")
    return state


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
