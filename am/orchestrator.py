"""The orchestrator: prepare every group, run one job for all pending tiles, stitch, register.

This is the library entry behind ``python -m am.pipeline``; the command line only builds the
settings and turns errors into exit codes::

    summary = run_pipeline(Path("data/inference/dataset"), settings=load_settings(), rows=50, cols=50)
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from am.backends import open_backend
from am.dataset import DatasetLayout
from am.errors import CheckpointError, ConfigError
from am.job import JobReport, new_job_id, run_job
from am.prepare import PreparedGroup, prepare_group
from am.settings import Settings
from am.stitch import stitch_group

log = logging.getLogger(__name__)


@dataclass
class PipelineSummary:
    groups: list[str]
    tiles: int = 0
    tiles_reused: int = 0
    job: JobReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    registered: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        total = sum(self.seconds.values())
        out = [f"groups: {', '.join(self.groups)}",
               f"tiles: {self.tiles} ({self.tiles_reused} reused from an earlier run)"]
        if self.job is not None:
            out.append(f"job {self.job.job_id}: {self.job.completed} tile(s) segmented, "
                       f"model compute {self.job.compute_s:.1f} s summed over workers")
        out.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()) + f", total {total:.1f} s")
        out.extend(f"registration {group}: {text}" for group, text in self.registered.items())
        return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checkpoint(path: Path) -> None:
    """Refuse a model file that is not a usable checkpoint before any worker starts.

    Every worker would fail on it in the same way, and the user would see that only as "all
    workers stopped" with log tails; here the error names the file and what is wrong with it.
    Loading is safe (``weights_only=True``) and costs one read of the weights.
    """
    from am.model.checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"model {path} cannot be used (set by --model, AM_MODEL or the config): {exc}") from exc


def resolve_model(settings: Settings, *, cache_dir: Path) -> tuple[str, str]:
    """The model workers load (path or s3:// URI) and an identity that changes when its weights do."""
    if settings.model.startswith("s3://"):
        return settings.model, settings.model
    if settings.model:
        path = Path(settings.model).expanduser()
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist; pass a checkpoint path or an s3:// URI")
        check_checkpoint(path)
        return str(path.resolve()), _sha256(path)
    from am.model.checkpoint import default_model_path

    default = default_model_path()
    if default.is_file():
        return str(default), _sha256(default)
    from am.model.build import write_untrained_checkpoint

    untrained = cache_dir / "untrained-default.pt"
    if not untrained.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_untrained_checkpoint(untrained, seed=0)
    log.warning("no trained model is installed (%s missing): running an UNTRAINED model, masks are meaningless",
                default)
    return str(untrained), _sha256(untrained)


def _register(dataset: Path, groups: list[str], *, rows: int | None, cols: int | None) -> dict[str, str]:
    from am.register import register_group

    layout = DatasetLayout(dataset)
    done = {}
    for group in groups:
        # Ids of an earlier registration (another grid, another mask) must not outlive a failed one.
        old = layout.am_coords_dir(group)
        if old.exists():
            log.info("group %s: removing the ids of an earlier registration in %s", group, old)
            shutil.rmtree(old)
        registration = register_group(dataset, group, rows=rows, cols=cols)
        done[group] = (f"{registration.assigned} of {registration.found} marks numbered on a "
                       f"{registration.rows}x{registration.cols} grid, {registration.empty_nodes} empty node(s)")
    return done


def run_pipeline(
    dataset: Path,
    *,
    settings: Settings,
    groups: list[str] | None = None,
    rows: int | None = None,
    cols: int | None = None,
    register: bool = True,
    cache_dir: Path,
    environ: Mapping[str, str] | None = None,
    show_progress: bool = True,
) -> PipelineSummary:
    """Run every stage on ``dataset``; raises an AmError subclass on any failure."""
    layout = DatasetLayout(Path(dataset))
    selected = layout.groups(groups)
    summary = PipelineSummary(groups=selected)

    started = time.monotonic()
    model, model_id = resolve_model(settings, cache_dir=cache_dir)
    prepared: list[PreparedGroup] = []
    for group in tqdm(selected, desc="prepare", unit="group", disable=not show_progress or len(selected) < 2):
        prepared.append(prepare_group(layout, group, settings=settings, model_id=model_id))
    summary.tiles = sum(p.n_tiles for p in prepared)
    summary.tiles_reused = sum(p.n_tiles - len(p.pending) for p in prepared)
    summary.seconds["prepare"] = time.monotonic() - started

    pending = [p for p in prepared if p.pending]
    if pending:
        with tempfile.TemporaryDirectory(prefix="am-segm-workers-") as log_dir, \
                open_backend(settings, model=model, log_dir=Path(log_dir), base_environment=environ) as backend:
            job = run_job(backend, pending, layout=layout, settings=settings, job_id=new_job_id(),
                          show_progress=show_progress)
        summary.job = job
        summary.seconds.update(job.seconds)
    else:
        log.info("every tile already has a mask; nothing to segment")

    started = time.monotonic()
    for group in prepared:
        stitch_group(layout, group)
    summary.seconds["stitch"] = time.monotonic() - started

    if register and rows is not None and cols is not None:
        started = time.monotonic()
        summary.registered = _register(layout.root, selected, rows=rows, cols=cols)
        summary.seconds["register"] = time.monotonic() - started
    return summary
