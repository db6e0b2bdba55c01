"""Preparation and segmentation overlap: workers start first, tiles go out a row at a time, failures clean up.

The pipeline runs in this process on moto (``mock_aws``) with the real Worker class on threads
and a predictor that thresholds at 128, so the order of events (workers started, image
normalised, chunks cut, chunks enqueued) can be recorded exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import tifffile
from faults.harness import ThreadLauncher, make_dataset
from moto import mock_aws

import am.job
import am.orchestrator
from am.backends import Backend
from am.dataset import DatasetLayout
from am.errors import ConfigError, InputError, JobFailed, LauncherError, TransportError
from am.imageio import read_image, write_png
from am.job import TILES_PER_MESSAGE_AWS, TILES_PER_MESSAGE_LOCAL, Job, tiles_per_message
from am.messages import TileMessage, TileResult, tiles_key
from am.orchestrator import run_pipeline
from am.prepare import GroupTiler, TileChunk, reuse_group
from am.settings import Settings
from am.tilepack import pack_masks, unpack_tiles
from am.transport.clients import ClientFactory
from am.transport.queue import Queue, create_results_queue
from am.transport.storage import Storage
from tests.environment import clean_env
from tests.pipeline.mocked_aws import deploy
from tests.waiting import wait_until

# A 300 x 300 image in 64 px tiles overlapping by 16: 6 rows of 6 tiles, so 6 chunks.
IMAGE = (300, 300)
ROWS = COLS = 6


class Threshold:
    """Stands in for the model: 255 where a tile is >= 128, as a model that learnt just that."""

    device = "cpu"

    def __init__(self) -> None:
        self.ttas: list[str] = []

    def predict(self, tiles: np.ndarray, *, tta: str = "off") -> np.ndarray:
        self.ttas.append(tta)
        return np.where(tiles >= 128, np.uint8(255), np.uint8(0))


class Deployment:
    """What ``open_backend`` yields in these tests: moto's buckets and queues and a thread launcher."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clients = ClientFactory(region=settings.region)
        self.storage = Storage(self.clients.s3(), threads=4)
        self.events: list[str] = []
        self.launchers: list[ThreadLauncher] = []
        self.opened = 0
        self.queue_url, self.dlq_url = deploy(self.clients, settings, threads=4)

    @contextmanager
    def open_backend(self, settings: Settings, *, model: str, log_dir: Path,
                     base_environment: Mapping[str, str] | None = None) -> Iterator[Backend]:
        self.opened += 1
        self.predictor = Threshold()
        launcher = ThreadLauncher(self.clients, self.predictor, input_bucket=settings.input_bucket,
                                  output_bucket=settings.output_bucket, queue_url=self.queue_url, events=self.events)
        self.launchers.append(launcher)
        try:
            yield Backend("local", self.clients, launcher, self.queue_url, self.dlq_url, settings.input_bucket,
                          settings.output_bucket, model)
        finally:
            launcher.stop()

    def keys(self) -> list[str]:
        return [key for bucket in (self.settings.input_bucket, self.settings.output_bucket)
                for key in self.storage.list_keys(bucket, "")]

    def results_queues(self) -> list[str]:
        return self.clients.sqs().list_queues(QueueNamePrefix=self.settings.results_queue_prefix).get("QueueUrls", [])


class RecordingTiler(GroupTiler):
    """The real tiler, recording when it normalises and cuts; ``fail_at`` raises while cutting that chunk."""

    events: ClassVar[list[str]] = []
    fail_at: ClassVar[int | None] = None
    failure: ClassVar[BaseException] = OSError(28, "No space left on device")

    def normalise(self):  # type: ignore[override]
        self.events.append("normalise")
        return super().normalise()

    def chunks(self) -> Iterator[TileChunk]:
        for number, chunk in enumerate(super().chunks()):
            self.events.append(f"cut {number}")
            if number == self.fail_at:
                raise self.failure
            yield chunk


@pytest.fixture
def deployment(monkeypatch: pytest.MonkeyPatch, fake_aws_credentials: None) -> Iterator[Deployment]:
    settings = Settings(tile_size=64, tile_overlap=16, workers=2, transfer_threads=4)
    with mock_aws():
        deployment = Deployment(settings)
        monkeypatch.setattr(am.orchestrator, "open_backend", deployment.open_backend)
        monkeypatch.setattr(RecordingTiler, "events", deployment.events)
        monkeypatch.setattr(am.orchestrator, "GroupTiler", RecordingTiler)
        original = Job._upload

        def recording_upload(job: Job, group: str, tiles: list[tuple[int, Any]]) -> float:
            seconds = original(job, group, tiles)
            deployment.events.append(f"enqueued {len(tiles)}")
            return seconds

        monkeypatch.setattr(Job, "_upload", recording_upload)
        stitch_mask = am.orchestrator.stitch_mask

        def recording_stitch(layout: DatasetLayout, prepared: Any) -> Any:
            deployment.events.append(f"stitch {prepared.group}")
            return stitch_mask(layout, prepared)

        monkeypatch.setattr(am.orchestrator, "stitch_mask", recording_stitch)
        yield deployment


def _run(dataset: Path, deployment: Deployment, tiny_model: Path, tmp_path: Path):
    settings = deployment.settings.replace(model=str(tiny_model))
    return run_pipeline(dataset, settings=settings, register=False, cache_dir=tmp_path / "cache",
                        show_progress=False)


def test_workers_start_before_the_image_is_read_and_tiles_go_out_row_by_row(deployment, tiny_model, tmp_path):
    dataset = make_dataset(tmp_path / "ds", {"g1": IMAGE})
    summary = _run(dataset, deployment, tiny_model, tmp_path)

    events = deployment.events
    assert events.index("start workers") < events.index("normalise"), events
    cuts = [i for i, e in enumerate(events) if e.startswith("cut ")]
    sends = [i for i, e in enumerate(events) if e.startswith("enqueued ")]
    assert len(cuts) == ROWS and [events[i] for i in sends] == [f"enqueued {COLS}"] * ROWS, events
    # While the last row was cut, earlier rows were already on the queue.
    assert sends[0] < cuts[-1], events
    assert summary.job is not None and summary.job.completed == summary.tiles == ROWS * COLS
    assert set(summary.busy) == {"prepare busy", "upload busy", "collect busy", "tail"}
    assert list(summary.seconds) == ["setup", "prepare+segment", "stitch", "clean-up", "overlay"]
    # Stitching (and the overlay it starts) goes before the workers are stopped and the job's data deleted.
    assert events.index("stitch g1") < events.index("stop workers"), events

    layout = DatasetLayout(dataset)
    for index in range(ROWS * COLS):
        tile = read_image(layout.tile_source("g1", index))
        assert np.array_equal(read_image(layout.tile_mask("g1", index)), Threshold().predict(tile))
    assert read_image(layout.stitched_mask("g1")).shape == IMAGE
    assert deployment.keys() == [] and deployment.results_queues() == []


def _record_bar_totals(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The segment bar's total as each chunk is sent, in order."""
    totals: list[float] = []
    send = Job.send

    def recording_send(job: Job, group: str, tiles: Any, **kwargs: Any) -> None:
        totals.append(job._bar.total)
        send(job, group, tiles, **kwargs)

    monkeypatch.setattr(Job, "send", recording_send)
    return totals


def test_the_progress_bar_knows_every_tile_before_the_first_row_is_cut(deployment, tiny_model, tmp_path,
                                                                        monkeypatch):
    dataset = make_dataset(tmp_path / "ds", {"g1": IMAGE, "g2": (200, 300)})
    totals = _record_bar_totals(monkeypatch)
    summary = _run(dataset, deployment, tiny_model, tmp_path)
    # 36 tiles of g1 and 4 rows of 6 of g2: the total the first row saw is the job's.
    assert summary.tiles == 60 and totals == [60] * 10, totals


def test_the_progress_bar_of_a_resumed_group_counts_only_the_tiles_it_sends(deployment, tiny_model, tmp_path,
                                                                          monkeypatch):
    dataset = make_dataset(tmp_path / "ds", {"g1": IMAGE})
    _run(dataset, deployment, tiny_model, tmp_path)
    # As a run stopped while cutting leaves it: the plan not complete, masks for only some tiles.
    layout = DatasetLayout(dataset)
    meta = json.loads(layout.tile_plan("g1").read_text())
    layout.tile_plan("g1").write_text(json.dumps({**meta, "complete": False}))
    for index in range(20, ROWS * COLS):
        layout.tile_mask("g1", index).unlink()
    totals = _record_bar_totals(monkeypatch)
    summary = _run(dataset, deployment, tiny_model, tmp_path)
    assert summary.job is not None and summary.job.completed == 16 and summary.tiles_reused == 20
    # Tiles 20-35 lie in rows 3-5 (of 6 tiles each): the total the first of them saw is the 16 sent.
    assert totals == [16] * 3, totals


@pytest.mark.parametrize("lost", ["source_norm", "tile sources", "damaged source_norm", "resized source_norm",
                                  "truncated source_norm"])
def test_files_that_can_be_made_again_going_missing_do_not_cost_the_masks(deployment, tiny_model, tmp_path, lost,
                                                                         caplog):
    dataset = make_dataset(tmp_path / "ds", {"g1": IMAGE})
    _run(dataset, deployment, tiny_model, tmp_path)
    layout = DatasetLayout(dataset)
    masks = {i: layout.tile_mask("g1", i).read_bytes() for i in range(ROWS * COLS)}
    normalised = layout.source_norm("g1").read_bytes()
    if lost == "source_norm":
        layout.source_norm("g1").unlink()
    elif lost == "damaged source_norm":  # registration and the overlays would fail on it at every rerun
        layout.source_norm("g1").write_bytes(b"junk")
    elif lost == "resized source_norm":
        tifffile.imwrite(layout.source_norm("g1"), np.zeros((100, 100), np.uint8))
    elif lost == "truncated source_norm":  # its header intact: only its length tells
        layout.source_norm("g1").write_bytes(normalised[: len(normalised) // 2])
    else:
        for index in (0, 7, 35):
            layout.tile_source("g1", index).unlink()
    caplog.set_level("INFO", logger="am.prepare")
    summary = _run(dataset, deployment, tiny_model, tmp_path)
    assert summary.tiles == ROWS * COLS and summary.tiles_reused == ROWS * COLS
    assert summary.job is None, "no job, so no worker: every tile has its mask, nothing to segment"
    assert {i: layout.tile_mask("g1", i).read_bytes() for i in range(ROWS * COLS)} == masks
    assert layout.source_norm("g1").is_file() and all(layout.tile_source("g1", i).is_file() for i in range(36))
    if lost.endswith("d source_norm"):
        assert layout.source_norm("g1").read_bytes() == normalised
        said = "is 100 x 100 px, 1 channel(s) of uint8, not" if lost.startswith("resized") else "cannot be read"
        assert any(m.startswith("group g1: the normalised image") and said in m and "normalising and cutting again"
                   in m for m in (r.getMessage() for r in caplog.records)), caplog.text
    else:
        said = "3 of its 36 tile(s)" if lost == "tile sources" else str(layout.source_norm("g1"))
        assert any(f"group g1: {said} went missing since the earlier run" in r.getMessage() for r in caplog.records)
    assert any("resuming a finished run, 36 of 36 tiles already have a mask" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_failure_while_cutting_a_later_row_cleans_up_and_leaves_no_complete_plan(deployment, tiny_model, tmp_path,
                                                                        monkeypatch, failure):
    monkeypatch.setattr(RecordingTiler, "fail_at", 3)
    monkeypatch.setattr(RecordingTiler, "failure", failure)
    dataset = make_dataset(tmp_path / "ds", {"g1": IMAGE})
    with pytest.raises(type(failure)):
        _run(dataset, deployment, tiny_model, tmp_path)

    [launcher] = deployment.launchers
    assert launcher.stopped and launcher.alive() == 0
    assert "enqueued 6" in deployment.events, "no row was sent before the failure: the test proves nothing"
    assert deployment.keys() == [], "the job's S3 prefixes were not deleted"
    assert deployment.results_queues() == [], "the job's results queue was not deleted"
    layout = DatasetLayout(dataset)
    assert json.loads(layout.tile_plan("g1").read_text())["complete"] is False, \
        "a plan was marked complete for tiles that were never all cut"
    assert not layout.stitched_dir("g1").exists()


def test_rerun_reuses_every_tile_without_starting_a_backend_and_resumes_a_missing_mask(deployment, tiny_model,
                                                                                      tmp_path):
    dataset = make_dataset(tmp_path / "ds", {"g1": IMAGE, "g2": (130, 200)})
    first = _run(dataset, deployment, tiny_model, tmp_path)
    assert deployment.opened == 1 and first.tiles_reused == 0

    again = _run(dataset, deployment, tiny_model, tmp_path)
    assert deployment.opened == 1, "a rerun with every mask in place opened a backend"
    assert again.job is None and again.tiles_reused == again.tiles == first.tiles
    assert list(again.seconds) == ["prepare", "stitch", "overlay"]

    DatasetLayout(dataset).tile_mask("g2", 1).unlink()
    deployment.events.clear()
    resumed = _run(dataset, deployment, tiny_model, tmp_path)
    assert resumed.job is not None and resumed.job.tiles == 1 and resumed.tiles_reused == first.tiles - 1
    assert "normalise" not in deployment.events and deployment.events.count("enqueued 1") == 1
    assert deployment.events.count("start workers") == 1 and len(deployment.launchers[-1].workers) == 1


def test_a_damaged_mask_tile_is_named_and_a_rerun_after_deleting_it_makes_it_again(deployment, tiny_model,
                                                                                  tmp_path):
    dataset = make_dataset(tmp_path / "ds", {"g1": IMAGE})
    first = _run(dataset, deployment, tiny_model, tmp_path)
    damaged = DatasetLayout(dataset).tile_mask("g1", 4)
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(InputError, match=r"mask tile .*0*4\.png is damaged \(.*\); delete it and rerun the same "
                                         r"command to make it again"):
        _run(dataset, deployment, tiny_model, tmp_path)
    damaged.unlink()
    again = _run(dataset, deployment, tiny_model, tmp_path)
    assert again.job is not None and again.job.tiles == 1 and again.tiles_reused == first.tiles - 1


def test_the_jobs_tta_reaches_the_workers_and_a_rerun_with_another_segments_again(deployment, tiny_model, tmp_path):
    dataset = make_dataset(tmp_path / "ds", {"g1": IMAGE})
    deployment.settings = deployment.settings.replace(tta="d4")
    first = _run(dataset, deployment, tiny_model, tmp_path)
    assert first.tiles > 1 and set(deployment.predictor.ttas) == {"d4"}
    assert _run(dataset, deployment, tiny_model, tmp_path).job is None  # same TTA: every mask reused
    deployment.settings = deployment.settings.replace(tta="off")
    again = _run(dataset, deployment, tiny_model, tmp_path)
    assert again.job is not None and again.job.tiles == first.tiles and again.tiles_reused == 0
    assert set(deployment.predictor.ttas) == {"off"}


def test_a_rerun_with_other_worker_mask_settings_in_the_environment_segments_again(deployment, tiny_model, tmp_path):
    """Local workers inherit AM_POSTPROCESS and the like: masks made with another value are not reused."""
    dataset = make_dataset(tmp_path / "ds", {"g1": IMAGE})
    settings = deployment.settings.replace(model=str(tiny_model))

    def run(environ: dict[str, str]):
        return run_pipeline(dataset, settings=settings, register=False, cache_dir=tmp_path / "cache",
                            environ=environ, show_progress=False)

    first = run({"AM_POSTPROCESS": "off"})
    assert first.job is not None and first.tiles == ROWS * COLS
    assert run({"AM_POSTPROCESS": "off"}).job is None, "the same settings did not reuse every mask"
    again = run({})
    assert again.job is not None and again.job.tiles == first.tiles and again.tiles_reused == 0


def test_tiler_writes_a_row_per_chunk_and_refuses_a_plan_before_every_tile_is_cut(tmp_path):
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": IMAGE}))
    settings = Settings(tile_size=64, tile_overlap=16)
    tiler = GroupTiler(layout, "g1", settings=settings, model_id="m")
    plan = tiler.normalise()
    chunks = tiler.chunks()
    first = next(chunks)
    assert [index for index, _ in first.tiles] == [t.index for t in plan.tiles if t.y == 0]
    assert all(np.array_equal(read_image(layout.tile_source("g1", index)), pixels) for index, pixels in first.tiles)
    with pytest.raises(RuntimeError, match=f"{COLS} of {ROWS * COLS} tiles are cut"):
        tiler.finish()
    # The plan is on disk from the start, but marked incomplete: nothing reuses it as it is.
    assert json.loads(layout.tile_plan("g1").read_text())["complete"] is False
    assert reuse_group(layout, "g1", settings=settings, model_id="m") is None

    assert len(list(chunks)) == ROWS - 1
    prepared = tiler.finish()
    assert prepared.pending == tuple(range(ROWS * COLS))
    assert json.loads(layout.tile_plan("g1").read_text())["complete"] is True
    assert reuse_group(layout, "g1", settings=settings, model_id="m") == prepared


def _stop_after_first_row(layout: DatasetLayout, settings: Settings, model_id: str) -> list[int]:
    """Cut one row of g1, give its tiles masks, and stop as an interrupted run would; the masked tiles."""
    tiler = GroupTiler(layout, "g1", settings=settings, model_id=model_id)
    tiler.normalise()
    first = next(tiler.chunks())
    for index, pixels in first.tiles:
        write_png(layout.tile_mask("g1", index), (pixels > 128).astype(np.uint8) * 255)
    return [index for index, _ in first.tiles]


def test_a_run_stopped_while_cutting_keeps_its_masks_and_the_next_sends_only_the_rest(tmp_path):
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": IMAGE}))
    settings = Settings(tile_size=64, tile_overlap=16)
    masked = _stop_after_first_row(layout, settings, "m")
    kept = {index: layout.tile_mask("g1", index).read_bytes() for index in masked}
    assert reuse_group(layout, "g1", settings=settings, model_id="m") is None

    again = GroupTiler(layout, "g1", settings=settings, model_id="m")
    plan = again.normalise()
    sent = [index for chunk in again.chunks() for index, _ in chunk.tiles]
    prepared = again.finish()
    assert sent == [t.index for t in plan.tiles if t.index not in kept] == list(prepared.pending)
    assert {index: layout.tile_mask("g1", index).read_bytes() for index in masked} == kept
    assert all(layout.tile_source("g1", t.index).is_file() for t in plan.tiles)


@pytest.mark.parametrize("change", ["model", "settings", "source"])
def test_masks_of_a_stopped_run_on_another_input_are_not_kept(tmp_path, change):
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": IMAGE}))
    settings = Settings(tile_size=64, tile_overlap=16)
    masked = _stop_after_first_row(layout, settings, "m")
    model_id = "m"
    if change == "model":
        model_id = "other"
    elif change == "settings":
        settings = settings.replace(norm_high_pct=98.0)
    else:
        # Other pixels (a touched file with the same contents is the same input: see test_reuse_copy.py).
        make_dataset(layout.root, {"g1": IMAGE}, seed=7)
    again = GroupTiler(layout, "g1", settings=settings, model_id=model_id)
    again.normalise()
    assert not any(layout.tile_mask("g1", index).exists() for index in masked)
    sent = [index for chunk in again.chunks() for index, _ in chunk.tiles]
    assert sent == list(range(ROWS * COLS)) == list(again.finish().pending)


# ------------------------------------------------------------------------------ the job alone


class ExitedLauncher:
    """Workers that have all left, with the given exit codes; counts restarts."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.starts: list[int] = []

    def start(self, count: int, environment: Mapping[str, str]) -> None:
        self.starts.append(count)

    def alive(self) -> int:
        return 0

    def exit_codes(self) -> list[int | None]:
        return list(self.codes)

    def stop(self) -> None:
        pass


def _job(deployment: Deployment, launcher: ExitedLauncher, tmp_path: Path) -> Job:
    settings = deployment.settings
    backend = Backend("local", deployment.clients, launcher, deployment.queue_url, deployment.dlq_url,
                      settings.input_bucket, settings.output_bucket, "tiny")
    sqs = deployment.clients.sqs()
    results = create_results_queue(sqs, prefix=settings.results_queue_prefix, job="20261124-101500-abc123")
    job = Job(backend, results_url=results, layout=DatasetLayout(tmp_path / "ds"), settings=settings,
              job_id="20261124-101500-abc123", show_progress=False)
    job.start_workers(2)
    return job


def test_workers_that_left_idle_while_tiles_are_cut_are_started_again(deployment, tmp_path, monkeypatch):
    monkeypatch.setattr(am.job, "HEALTH_CHECK_EVERY_S", 0.0)
    launcher = ExitedLauncher([0, 0])
    job = _job(deployment, launcher, tmp_path)
    job.send("g", [(0, np.zeros((64, 64), np.uint8))])
    assert launcher.starts == [2, 2], "idle workers were not started again while tiles were still coming"
    job.seal()
    assert not job.revive_idle_workers(), "after the seal an empty pool is a failure, not a restart"
    job.close(after_failure=True)


def test_crashed_workers_are_not_restarted_while_tiles_are_cut(deployment, tmp_path, monkeypatch):
    monkeypatch.setattr(am.job, "HEALTH_CHECK_EVERY_S", 0.0)
    monkeypatch.setattr(am.job, "RESULT_WAIT_S", 0)
    launcher = ExitedLauncher([0, 1])
    job = _job(deployment, launcher, tmp_path)
    with pytest.raises(LauncherError, match=r"all workers stopped while 1 tile\(s\) were pending \(and more were "
                                            r"still being cut\)"):
        job.send("g", [(0, np.zeros((64, 64), np.uint8))])
    assert launcher.starts == [2]
    job.close(after_failure=True)


def test_a_job_is_not_finished_before_it_is_sealed(deployment, tmp_path):
    job = _job(deployment, ExitedLauncher([]), tmp_path)
    assert not job.tracker.finished, "a job with no tile sent yet must not count as finished"
    with pytest.raises(RuntimeError, match="seal"):
        job.wait()
    job.seal()
    assert job.tracker.finished and job.tracker.total == 0
    job.close(after_failure=False)


@pytest.mark.parametrize(("estimate", "sent"), [(5, 7), (10, 3)])
def test_a_bar_total_that_was_an_estimate_becomes_the_tiles_sent(deployment, tmp_path, estimate, sent):
    settings = deployment.settings
    backend = Backend("local", deployment.clients, ExitedLauncher([]), deployment.queue_url, deployment.dlq_url,
                      settings.input_bucket, settings.output_bucket, "tiny")
    results = create_results_queue(deployment.clients.sqs(), prefix=settings.results_queue_prefix, job="j-estimate")
    job = Job(backend, results_url=results, layout=DatasetLayout(tmp_path / "ds"), settings=settings,
              job_id="j-estimate", show_progress=False, expected_tiles=estimate)
    for index in range(sent):
        job.send("g", [(index, np.zeros((64, 64), np.uint8))])
        assert job._bar.total == max(estimate, index + 1), "a total below the tiles sent follows them"
    job.seal()
    assert job._bar.total == sent
    job.close(after_failure=True)


# ------------------------------------------------------------------------------ tiles per message


def _sent_messages(deployment: Deployment) -> list[TileMessage]:
    queue = Queue(deployment.clients.sqs(), deployment.queue_url)
    out = []
    while batch := queue.receive(max_messages=10, wait_s=0):
        out.extend(TileMessage.from_json(m.body) for m in batch)
    return out


def test_a_chunk_goes_out_tiles_per_message_to_an_object_and_a_message(deployment, tmp_path):
    deployment.settings = deployment.settings.replace(tiles_per_message=4)
    job = _job(deployment, ExitedLauncher([]), tmp_path)
    tiles = [(index, np.full((64, 64), index, np.uint8)) for index in (3, 4, 5, 6, 7, 9)]
    job.send("g", tiles)
    job._finish_sending()
    messages = sorted(_sent_messages(deployment), key=lambda m: m.tiles)
    assert [m.tiles for m in messages] == [(3, 4, 5, 6), (7, 9)]
    for message in messages:
        assert message.input == message.output == tiles_key(job.job_id, "g", message.tiles)
        data = deployment.storage.get_bytes(deployment.settings.input_bucket, message.input)
        stored = unpack_tiles(data, count=len(message.tiles), name=message.input)
        assert [int(t[0, 0]) for t in stored] == list(message.tiles)
    assert sorted(job.tracker.pending) == [f"g/{i:04d}" for i in (3, 4, 5, 6, 7, 9)]
    job.close(after_failure=True)


@pytest.mark.parametrize("valid", [(0, 64), (40, 65)])
def test_an_image_extent_that_does_not_fit_the_tiles_is_refused_before_anything_is_sent(deployment, tmp_path,
                                                                                        valid):
    job = _job(deployment, ExitedLauncher([]), tmp_path)
    with pytest.raises(ValueError, match=rf"group g: image extent \({valid[0]}, {valid[1]}\) .*tiles of 64 px"):
        job.send("g", [(0, np.zeros((64, 64), np.uint8))], valid=valid)
    assert job.tracker.total == 0 and not _sent_messages(deployment)
    job.close(after_failure=True)


def test_one_group_keeps_one_image_extent_and_its_messages_carry_it(deployment, tmp_path):
    job = _job(deployment, ExitedLauncher([]), tmp_path)
    job.send("g", [(0, np.zeros((64, 64), np.uint8))], valid=(40, 64))
    job.send("h", [(0, np.zeros((64, 64), np.uint8))])
    with pytest.raises(ValueError, match=r"group g: tiles sent with image extent None, earlier ones with \(40, 64\)"):
        job.send("g", [(1, np.zeros((64, 64), np.uint8))])
    job._finish_sending()
    messages = {m.group: m for m in _sent_messages(deployment)}
    assert messages["g"].valid == (40, 64) and messages["h"].valid is None
    assert sorted(job.tracker.pending) == ["g/0000", "h/0000"], "the refused chunk must not be tracked"
    job.close(after_failure=True)


def test_masks_of_a_message_are_written_per_tile_and_unusable_ones_give_up_every_tile(deployment, tmp_path):
    job = _job(deployment, ExitedLauncher([]), tmp_path)
    job.send("g", [(index, np.zeros((64, 64), np.uint8)) for index in range(5)])
    job._finish_sending()
    masks = np.zeros((3, 64, 64), np.uint8)
    masks[1, 10:20, 10:20] = 255
    out = deployment.settings.output_bucket
    deployment.storage.put_bytes(out, tiles_key(job.job_id, "g", (0,)), pack_masks(masks))
    deployment.storage.put_bytes(out, tiles_key(job.job_id, "g", (3,)), pack_masks(masks))  # 3 masks for 2 tiles
    report = {"job": job.job_id, "group": "g", "status": "done", "attempt": 1, "worker": "w", "compute_s": 0.3}
    job._collector.handle_results([TileResult(tiles=(0, 1, 2), **report).to_json(),
                                   TileResult(tiles=(3, 4), **report).to_json(),
                                   TileResult(tiles=(0, 1, 2), **report).to_json()])
    layout = DatasetLayout(tmp_path / "ds")
    assert np.array_equal(read_image(layout.tile_mask("g", 1)), masks[1])
    assert [layout.tile_mask("g", i).is_file() for i in range(5)] == [True] * 3 + [False] * 2
    tracker = job.tracker
    assert len(tracker.completed) == 3 and tracker.duplicates == 3 and abs(tracker.compute_s - 0.3) < 1e-9
    assert sorted(tracker.dead) == ["g/0003", "g/0004"]
    assert "unusable masks" in tracker.dead["g/0003"] and "expected (2, 64, 8)" in tracker.dead["g/0003"]
    job.close(after_failure=True)


def test_a_reported_mask_object_that_is_missing_gives_up_its_tiles_and_the_others_are_collected(deployment,
                                                                                                  tmp_path):
    job = _job(deployment, ExitedLauncher([]), tmp_path)
    job.send("g", [(index, np.zeros((64, 64), np.uint8)) for index in range(4)])
    job._finish_sending()
    out = deployment.settings.output_bucket
    deployment.storage.put_bytes(out, tiles_key(job.job_id, "g", (0, 1)), pack_masks(np.zeros((2, 64, 64), np.uint8)))
    report = {"job": job.job_id, "group": "g", "status": "done", "attempt": 1, "worker": "w", "compute_s": 0.2}
    # The object of tiles 2-3 was never written here (a worker of another output bucket, or deleted since).
    job._collector.handle_results([TileResult(tiles=(2, 3), **report).to_json(),
                                   TileResult(tiles=(0, 1), **report).to_json()])
    layout = DatasetLayout(tmp_path / "ds")
    assert [layout.tile_mask("g", i).is_file() for i in range(4)] == [True, True, False, False]
    assert sorted(job.tracker.dead) == ["g/0002", "g/0003"]
    missing = tiles_key(job.job_id, "g", (2, 3))
    assert f"s3://{out}/{missing}, but there is no such object" in job.tracker.dead["g/0002"]
    job.close(after_failure=True)


def test_a_missing_output_bucket_still_fails_the_job_at_once(deployment, tmp_path):
    job = _job(deployment, ExitedLauncher([]), tmp_path)
    job.send("g", [(0, np.zeros((64, 64), np.uint8))])
    job._finish_sending()
    report = {"job": job.job_id, "group": "g", "status": "done", "attempt": 1, "worker": "w", "compute_s": 0.2}
    job._collector.bucket = "no-such-bucket"
    with pytest.raises(TransportError, match="bucket no-such-bucket does not exist"):
        job._collector.handle_results([TileResult(tiles=(0,), **report).to_json()])
    job.close(after_failure=True)


def test_tiles_per_message_defaults_by_backend_and_is_validated():
    assert tiles_per_message(Settings(), backend="local") == TILES_PER_MESSAGE_LOCAL
    assert tiles_per_message(Settings(), backend="aws") == TILES_PER_MESSAGE_AWS
    assert tiles_per_message(Settings(tiles_per_message=1), backend="aws") == 1
    for bad in (-1, 257):
        with pytest.raises(ConfigError, match="tiles_per_message"):
            Settings(tiles_per_message=bad)


def test_local_workers_that_left_idle_before_the_first_tile_are_started_again(tmp_path, tiny_model, monkeypatch):
    """Real local worker processes leave after idle_exit_s; a slow first image must not strand the job."""
    jobs: list[Job] = []
    real_open_job = am.orchestrator.open_job

    @contextmanager
    def recording_open_job(*args: Any, **kwargs: Any) -> Iterator[Job]:
        with real_open_job(*args, **kwargs) as job:
            jobs.append(job)
            yield job

    class SlowTiler(GroupTiler):
        def normalise(self):  # type: ignore[override]
            launcher = jobs[0].backend.launcher
            wait_until(lambda: launcher.alive() == 0, timeout=120, what="every worker to leave, idle", poll_s=0.2,
                       detail=launcher.log_tail)
            assert launcher.exit_codes() == [0, 0], launcher.log_tail()
            return super().normalise()

    monkeypatch.setattr(am.orchestrator, "open_job", recording_open_job)
    monkeypatch.setattr(am.orchestrator, "GroupTiler", SlowTiler)
    dataset = make_dataset(tmp_path / "ds", {"g1": (300, 300)})
    settings = Settings(model=str(tiny_model), tile_size=128, tile_overlap=32, idle_exit_s=1.0, worker_threads=1)
    summary = run_pipeline(dataset, settings=settings, register=False, cache_dir=tmp_path / "cache",
                           environ=clean_env(XDG_CACHE_HOME=str(tmp_path / "cache")), show_progress=False)

    assert summary.job is not None and summary.job.completed == summary.tiles == 9
    launcher = jobs[0].backend.launcher
    assert len(launcher.pids) == 4, "the idle workers were not replaced"
    assert launcher.alive() == 0


def test_tiles_in_flight_never_exceed_the_window_and_every_tile_still_completes(deployment, tiny_model, tmp_path,
                                                                              monkeypatch):
    dataset = make_dataset(tmp_path / "ds", {"g1": IMAGE})
    in_flight: list[int] = []
    recording = Job._upload

    def upload(job: Job, group: str, tiles: list[tuple[int, Any]]) -> float:
        in_flight.append(job.tracker.pending_count)
        return recording(job, group, tiles)

    monkeypatch.setattr(Job, "_upload", upload)
    deployment.settings = deployment.settings.replace(max_tiles_in_flight=8)
    summary = _run(dataset, deployment, tiny_model, tmp_path)

    assert summary.job is not None and summary.job.completed == ROWS * COLS
    # A row of 6 tiles goes out in pieces of half the window, each only once it fits.
    assert len(in_flight) > ROWS and max(in_flight) <= 8, in_flight
    assert deployment.keys() == [] and deployment.results_queues() == []


def test_the_window_defaults_to_a_share_per_local_worker_and_none_on_aws():
    from am.job import IN_FLIGHT_PER_LOCAL_WORKER, in_flight_window

    assert in_flight_window(Settings(), backend="local", workers=3) == 3 * IN_FLIGHT_PER_LOCAL_WORKER
    assert in_flight_window(Settings(), backend="aws", workers=3) == 0
    assert in_flight_window(Settings(max_tiles_in_flight=10), backend="aws", workers=3) == 10
    with pytest.raises(ConfigError, match="max_tiles_in_flight"):
        Settings(max_tiles_in_flight=-1)


def test_a_message_that_always_fails_names_its_tiles_keeps_the_rest_and_a_rerun_redoes_only_them(
        deployment, tiny_model, tmp_path, monkeypatch):
    """Every tile of a message that fails its three receives is named; the others are kept and not sent again."""
    from am.worker.batch import TileSteps

    fetch = TileSteps.fetch
    spoiled = {"on": True}

    def fetch_spoiling_tile_5(steps: TileSteps, work: Any) -> None:
        fetch(steps, work)
        if spoiled["on"] and 5 in work.message.tiles:
            work.fail("input: the object is damaged")

    monkeypatch.setattr(TileSteps, "fetch", fetch_spoiling_tile_5)
    deployment.settings = deployment.settings.replace(tiles_per_message=4)
    dataset = make_dataset(tmp_path / "ds", {"g1": IMAGE})
    with pytest.raises(JobFailed) as failed:
        _run(dataset, deployment, tiny_model, tmp_path)
    text = str(failed.value)
    assert "2 of 36 tile(s) failed" in text, text
    assert "g1/0004: failed 3 times, last error: input: the object is damaged" in text, text
    assert "g1/0005: failed 3 times" in text
    layout = DatasetLayout(dataset)
    assert [i for i in range(ROWS * COLS) if not layout.tile_mask("g1", i).is_file()] == [4, 5]
    assert not layout.stitched_dir("g1").exists(), "a stitched mask with a hole was presented"
    assert deployment.keys() == [] and deployment.results_queues() == []

    spoiled["on"] = False
    again = _run(dataset, deployment, tiny_model, tmp_path)
    assert again.job is not None and again.job.tiles == 2 and again.tiles_reused == ROWS * COLS - 2
    assert read_image(layout.stitched_mask("g1")).shape == IMAGE
