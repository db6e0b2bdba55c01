"""The orchestrator: prepare every group, run one job for all pending tiles, stitch, register.

This is the library entry behind ``python -m am.pipeline``; the command line only builds the
settings and turns errors into exit codes::

    summary = run_pipeline(Path("data/inference/dataset"), settings=load_settings(), rows=50, cols=50)

Preparation and segmentation overlap. Whether there is work at all is decided first, from each
group's meta.json alone; if there is, the backend and its workers start before any image is
read, so their start-up (interpreter, torch, model) runs while the first group is normalised.
Tiles are then cut a row at a time, and each row is uploaded and enqueued while the next is cut;
reports are collected in between. Stitching and registration follow the last mask.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from am.backends import open_backend
from am.cli import describe_os_error
from am.dataset import DatasetLayout
from am.dataset_lock import dataset_lock
from am.errors import AmError, JobFailed, LauncherError, ModelReplaced
from am.files import check_can_replace, file_sha256, remove_leftover_temporaries
from am.interrupts import ThreadPool, deferred_interrupts, result_of, wait_for
from am.job import Job, JobReport, open_job, raise_for_lost_tiles
from am.messages import new_job_id
from am.model_source import resolve_model, s3_model_id
from am.prepare import (
    GroupTiler,
    PreparedGroup,
    check_group_image,
    check_group_pixels,
    planned_tiles,
    reuse_or_recut_group,
    tile_valid_extent,
    worker_mask_settings,
)
from am.settings import AUTO_SCALE, Settings
from am.stitch import stitch_mask, write_mask_overlay

if TYPE_CHECKING:
    from am.register.registration import Registration

log = logging.getLogger(__name__)



@dataclass
class PipelineSummary:
    """What a run did, and where its time went.

    ``seconds`` holds wall-clock phases that follow one another (setup, prepare+segment,
    clean-up, stitch, register, overlay; or prepare, stitch, register, overlay when nothing is
    segmented), so they
    add up to the total. ``busy`` looks inside prepare+segment, where stages overlap: the busy
    seconds of preparing (normalise and cut), uploading and collecting, and the ``tail`` from the
    last tile sent to the last mask collected; they do not add up to anything. ``scales`` names
    the groups whose tiles were cut at a factor other than 1 (``--scale``, or the one ``auto`` picked).
    """

    groups: list[str]
    tiles: int = 0
    tiles_reused: int = 0
    scales: dict[str, float] = field(default_factory=dict)
    job: JobReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    busy: dict[str, float] = field(default_factory=dict)
    registered: dict[str, str] = field(default_factory=dict)
    registration_failed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        total = sum(self.seconds.values())
        out = [f"groups: {', '.join(self.groups)}",
               f"tiles: {self.tiles} ({self.tiles_reused} reused from an earlier run)"]
        if self.scales:
            out.append("segmented at scale: " + ", ".join(f"{group} {scale:g}" for group, scale in self.scales.items()))
        if self.job is not None:
            out.append(f"job {self.job.job_id}: {self.job.completed} tile(s) segmented, "
                       f"model compute {self.job.compute_s:.1f} s summed over workers")
        out.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()) + f", total {total:.1f} s")
        if self.busy:
            out.append("within prepare+segment: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.busy.items()))
        out.extend(f"registration {group}: {text}" for group, text in self.registered.items())
        return out


class _Phases:
    """Wall-clock phases one after another: each ends where the next begins, so they add up to the total."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self._seconds = seconds
        self._mark = time.monotonic()

    def end(self, name: str) -> None:
        now = time.monotonic()
        self._seconds[name] = self._seconds.get(name, 0.0) + now - self._mark
        self._mark = now


class _Stopwatch:
    """Busy time summed over the blocks it times (``with stopwatch: ...``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> _Stopwatch:
        self._started = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.seconds += time.monotonic() - self._started


def _registration_text(registration: Registration) -> str:
    """One summary line's worth: counts, the grid and whether it was given or estimated, and the warnings."""
    grid = f"{registration.rows}x{registration.cols} grid"
    if registration.estimated_shape:
        grid += " estimated from the marks (no --rows/--cols)"
    text = (f"{registration.assigned} of {registration.found} marks numbered on a {grid}, "
            f"{registration.empty_nodes} empty node(s)")
    if registration.uneven_rows:
        text += ", rows unevenly spaced"
    if registration.warnings:
        text += f", {len(registration.warnings)} warning(s), in the log and in registration.json"
    return text


def _register(dataset: Path, groups: list[str], *, rows: int | None, cols: int | None,
              summary: PipelineSummary) -> None:
    """Register every group, each on its own: one group's failure is logged and recorded, the others go on.

    A group whose marks do not fit the grid says nothing about the next one (each is a separate
    acquisition), so stopping at the first would leave the later groups without ids for no reason.
    Failures go to ``summary.registration_failed``; the command exits 1 for them after the summary.
    """
    from am.register import register_group

    if rows is None or cols is None:
        log.info("no --rows/--cols given: registering each group on a grid estimated from its marks")
    for group in groups:
        try:
            # Ids of an earlier registration (another grid, another mask) do not outlive a failed one.
            registration = register_group(dataset, group, rows=rows, cols=cols)
        except (AmError, OSError) as exc:  # OSError: a read-only or full disk, a file where a folder goes
            reason = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            log.error("group %s: registration failed: %s", group, reason)
            summary.registered[group] = f"FAILED: {reason}"
            summary.registration_failed.append(group)
            continue
        summary.registered[group] = _registration_text(registration)


def _planned_tile_count(layout: DatasetLayout, reused: Mapping[str, PreparedGroup | None],
                        settings: Settings) -> int | None:
    """How many tiles the job will send (new groups counted from image headers); None when a header cannot tell."""
    tiles = 0
    for group, prepared in reused.items():
        planned = len(prepared.pending) if prepared is not None else planned_tiles(layout, group, settings=settings)
        if planned is None:
            return None
        tiles += planned
    return tiles


def _worker_count(planned: int | None, settings: Settings) -> int:
    """``settings.workers``, but no more than the job will have tiles."""
    return settings.workers if planned is None else max(1, min(settings.workers, planned))


def _cut_and_send(job: Job, layout: DatasetLayout, group: str, *, settings: Settings, model_id: str,
                  worker: Mapping[str, str], busy: _Stopwatch) -> PreparedGroup:
    """Normalise and cut one group a row of tiles at a time, handing each row to the job as soon as it is written."""
    tiler = GroupTiler(layout, group, settings=settings, model_id=model_id, worker=worker)
    with busy:
        tiler.normalise()
    # The group was planned from its header as wholly to send; masks kept from an interrupted run are not.
    job.expect_fewer(tiler.masks_kept)
    chunks = tiler.chunks()
    while True:
        with busy:
            chunk = next(chunks, None)
        if chunk is None:
            break
        job.send(chunk.group, chunk.tiles, valid=tile_valid_extent(tiler.plan))
    with busy:
        return tiler.finish()


def _send_every_tile(job: Job, layout: DatasetLayout, reused: Mapping[str, PreparedGroup | None], *,
                     settings: Settings, model_id: str, worker: Mapping[str, str],
                     busy: _Stopwatch) -> list[PreparedGroup]:
    """Send the pending tiles of reused groups (from disk), then cut and send the other groups; seal the job."""
    for group, prepared in reused.items():
        if prepared is not None and prepared.pending:
            job.send(group, [(index, layout.tile_source(group, index)) for index in prepared.pending],
                     valid=tile_valid_extent(prepared.plan))
    done = [prepared if prepared is not None
            else _cut_and_send(job, layout, group, settings=settings, model_id=model_id, worker=worker, busy=busy)
            for group, prepared in reused.items()]
    job.seal()
    return done


@contextmanager
def _worker_log_folder() -> Iterator[Path]:
    """A folder for the local workers' logs: removed when the run ends, kept when tiles failed or workers stopped.

    A worker's log may be the only place that says why a tile failed (a message it rejected,
    say, is never reported); the error names the log, so it must still be there to read. Logs
    that stayed empty say nothing, so a folder of only those goes too.
    """
    folder = Path(tempfile.mkdtemp(prefix="am-segm-workers-"))
    try:
        yield folder
    except (JobFailed, LauncherError):
        if any(path.is_file() and path.stat().st_size > 0 for path in folder.iterdir()):
            log.warning("worker logs kept in %s", folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)


def _check_model_unchanged(layout: DatasetLayout, prepared: list[PreparedGroup], *, settings: Settings,
                           model: str, model_id: str) -> None:
    """Refuse masks made while the job's checkpoint was replaced: an s3:// one under its key, a local
    one in its file.

    Workers look an object up as they go (am.worker.models), and local workers load the file when
    they start, so tiles segmented after the change used the new weights and those before it the
    old: the masks mix two models while meta.json names the first, and every rerun with the first
    would reuse them. Its tile plans are removed, so that no later run reuses these masks.
    """
    if model.startswith("s3://"):
        now = s3_model_id(settings, model)
        versions = f"version {model_id.rsplit('@', 1)[-1]} at the start, {now.rsplit('@', 1)[-1]} now"
    else:
        try:
            now = file_sha256(Path(model))
        except FileNotFoundError:
            now = ""
        versions = (f"SHA-256 {model_id[:12]} at the start, {now[:12]} now" if now
                    else f"SHA-256 {model_id[:12]} at the start, no file now")
    if now == model_id:
        return
    for group in prepared:
        layout.tile_plan(group.group).unlink(missing_ok=True)
    raise ModelReplaced(f"model {model} was replaced while this run segmented its tiles ({versions}), so its masks "
                        "may mix both checkpoints; nothing was stitched and the groups' tile plans were removed: "
                        "rerun to segment them again with the current checkpoint")


def _prepare_and_segment(layout: DatasetLayout, reused: Mapping[str, PreparedGroup | None], *, settings: Settings,
                         model: str, model_id: str, worker: Mapping[str, str], environ: Mapping[str, str] | None,
                         show_progress: bool, summary: PipelineSummary, phases: _Phases,
                         on_segmented: Callable[[list[PreparedGroup]], None]) -> list[PreparedGroup]:
    """Start the backend and its workers, then cut, send and segment every group's tiles, all overlapping.

    ``on_segmented`` gets the groups once every mask is on disk, before the clean-up: stitching
    needs nothing the clean-up removes, so the overlays it starts are encoded while the workers
    stop and the job's queue and objects are deleted.
    """
    busy = _Stopwatch()
    planned = _planned_tile_count(layout, reused, settings)
    with _worker_log_folder() as log_dir, \
            open_backend(settings, model=model, log_dir=log_dir, base_environment=environ) as backend, \
            open_job(backend, layout=layout, settings=settings, job_id=new_job_id(),
                     workers=_worker_count(planned, settings), show_progress=show_progress,
                     worker_logs=log_dir if backend.name == "local" else None,
                     # With scale auto the count is made at scale 1, too rough for a progress bar's total.
                     expected_tiles=None if settings.scale == AUTO_SCALE else planned) as job:
        phases.end("setup")
        prepared = _send_every_tile(job, layout, reused, settings=settings, model_id=model_id, worker=worker,
                                    busy=busy)
        job.wait()
        phases.end("prepare+segment")
        report = job.report()
        summary.job = report
        summary.busy = {"prepare busy": busy.seconds, "upload busy": report.seconds.get("upload", 0.0),
                        "collect busy": report.seconds.get("collect", 0.0), "tail": report.seconds.get("tail", 0.0)}
        raise_for_lost_tiles(report)
        _check_model_unchanged(layout, prepared, settings=settings, model=model, model_id=model_id)
        on_segmented(prepared)
        phases.end("stitch")
    phases.end("clean-up")
    return prepared


def _check_outputs_writable(layout: DatasetLayout, groups: list[str], *, register: bool) -> None:
    """Fail on a dataset that cannot be written now, not once the workers are up.

    Checked where the run makes or replaces something: each group's output folder and the folder
    holding it (outputs are staged beside the folder they replace), or the nearest folder that
    exists where they do not yet. A rerun inside a read-only dataset whose output folders are
    writable goes ahead. Marks are numbered into ``am_coords/<group>`` only with ``register``;
    without, an earlier run's numbering there is still removed when the group is prepared anew.
    """
    folders = []
    for group in groups:
        # The mask folder too: masks are written into it as workers report them, long after they started.
        folders += [layout.source_norm(group).parent, layout.tiles_dir(group), layout.tile_mask(group, 0).parent,
                    layout.stitched_dir(group)]
        if register or layout.am_coords_dir(group).exists():
            folders.append(layout.am_coords_dir(group))
    check_can_replace(folders)


def _remove_unfinished_registration(layout: DatasetLayout, group: str) -> None:
    """Remove the staging folder of a registration killed while writing it (kill -9, a power cut).

    The group's next registration would remove it too, but runs that register nothing
    (``--no-register``) would leave it for good. The caller holds the dataset's lock.
    """
    staging = layout.am_coords_staging(group)
    if staging.is_symlink() or staging.is_file():
        staging.unlink()
    elif staging.is_dir():
        log.info("removing %s, left by a registration stopped while writing it", staging)
        shutil.rmtree(staging)


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
    lock_wait_s: float = 0.0,
) -> PipelineSummary:
    """Run every stage on ``dataset``; raises an AmError subclass on any failure but a group's registration.

    ``register`` numbers the marks of every group, on a ``rows`` x ``cols`` grid or, where they
    are None, on one estimated from each group's marks. A group that cannot be registered is
    logged and listed in ``summary.registration_failed`` instead of raising, so that every other
    group is still registered and every mask kept; the caller decides the exit code from it.
    """
    layout = DatasetLayout(Path(dataset))
    selected = layout.groups(groups)
    summary = PipelineSummary(groups=selected)
    phases = _Phases(summary.seconds)

    # Held to the end: a second run on this dataset meanwhile would remove this one's tiles and ids.
    with dataset_lock(layout.root, command="am.pipeline", wait_s=lock_wait_s):
        for group in selected:
            check_group_image(layout, group, settings=settings)
        _check_outputs_writable(layout, selected, register=register)
        # Under the lock and before any job: nothing else can be writing there, so a temporary file
        # is a killed run's and would stay for good, in folders that reruns keep (the normalised
        # image's, hundreds of MB for a large one, even outlives a full re-cut).
        for group in selected:
            for folder in (layout.tile_source(group, 0).parent, layout.tile_mask(group, 0).parent,
                           layout.tiles_dir(group), layout.source_norm(group).parent, layout.stitched_dir(group)):
                remove_leftover_temporaries(folder)
            _remove_unfinished_registration(layout, group)
        worker = worker_mask_settings(os.environ if environ is None else environ, backend=settings.backend)
        model, model_id = resolve_model(settings, cache_dir=cache_dir)
        # Decided before any worker starts: a rerun with every mask in place starts none (a group whose tiles
        # or normalised image went missing is cut again first, there being nothing to segment).
        reused = {group: reuse_or_recut_group(layout, group, settings=settings, model_id=model_id, worker=worker)
                  for group in selected}
        for group, prepared in reused.items():
            if prepared is None:  # to be cut: a blank image is refused here, before any worker starts
                check_group_pixels(layout, group)

        # Overlays are pictures for people that nothing downstream reads: they are drawn and encoded
        # on a thread while the next group is stitched, the job is cleaned up and the marks are registered.
        with ThreadPool(1, thread_name_prefix="am-overlay") as overlays:
            drawing: list[Future[None]] = []

            def stitch(groups: list[PreparedGroup]) -> None:
                for group in groups:
                    drawing.append(overlays.submit(write_mask_overlay, layout, group.group, stitch_mask(layout, group)))

            try:
                if all(prepared is not None and not prepared.pending for prepared in reused.values()):
                    log.info("every tile already has a mask; nothing to segment")
                    prepared = [p for p in reused.values() if p is not None]
                    phases.end("prepare")
                    stitch(prepared)
                    phases.end("stitch")
                else:
                    prepared = _prepare_and_segment(layout, reused, settings=settings, model=model, model_id=model_id,
                                                    worker=worker, environ=environ, show_progress=show_progress,
                                                    summary=summary, phases=phases, on_segmented=stitch)
                summary.tiles = sum(p.n_tiles for p in prepared)
                summary.tiles_reused = sum(p.n_tiles - len(p.pending) for p in prepared)
                summary.scales = {p.group: p.scale for p in prepared if p.scale != 1.0}
                if register:
                    _register(layout.root, selected, rows=rows, cols=cols, summary=summary)
                    phases.end("register")
                for future in drawing:
                    result_of(future)
                phases.end("overlay")
            except BaseException as failure:
                _log_overlay_errors(drawing, raised=failure)
                raise
        return summary


def _log_overlay_errors(drawing: list[Future[None]], *, raised: BaseException) -> None:
    """A run failing for another reason must not hide that an overlay failed too: log it.

    The overlay whose error is ``raised`` (the run failed on it) is left out: that error is reported anyway.
    """
    with deferred_interrupts():
        started = [future for future in drawing if not future.cancel()]
    wait_for(started)
    with deferred_interrupts():
        errors = [future.exception() for future in started]
    for error in errors:
        if error is not None and error is not raised:
            log.error("could not write an overlay while the run was failing: %s", error)
