"""A rerun whose every mask is in place segments nothing and starts no worker, whatever else went
missing (a tile, the normalised image) or was spelt otherwise (the scale); an output folder linked to
another disk stays linked, with its target kept, through every rerun; a run in a process that ran one
before does not wait on a queue the earlier run's endpoint left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faults.harness import make_dataset, mask_files

import am.orchestrator
import am.prepare
from am.dataset import DatasetLayout
from am.endpoint import EmbeddedEndpoint
from am.orchestrator import run_pipeline
from am.settings import Settings
from am.transport.clients import ClientFactory

SETTINGS = Settings(tile_size=64, tile_overlap=16, workers=1)


def _run(dataset: Path, tiny_model: Path, tmp_path: Path, **changes: object) -> am.orchestrator.PipelineSummary:
    return run_pipeline(dataset, settings=SETTINGS.replace(model=str(tiny_model), **changes), register=False,
                        cache_dir=tmp_path / "cache", show_progress=False)


def _masks(dataset: Path) -> dict[str, int]:
    """Each mask file with its modification time: a mask made again has another."""
    return {path.name: path.stat().st_mtime_ns for path in mask_files(dataset, "g1")}


@pytest.fixture
def finished(tmp_path: Path, tiny_model: Path) -> Path:
    dataset = make_dataset(tmp_path / "ds", {"g1": (150, 170)})
    _run(dataset, tiny_model, tmp_path, scale="auto")
    assert len(mask_files(dataset, "g1")) > 1
    return dataset


def _no_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("workers were started for a run with every mask in place")

    monkeypatch.setattr(am.orchestrator, "open_backend", refuse)


@pytest.mark.parametrize("lost", ["a tile", "the normalised image"])
def test_a_rerun_with_every_mask_in_place_starts_no_worker_whatever_went_missing(
        finished: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost: str) -> None:
    layout = DatasetLayout(finished)
    before = _masks(finished)
    missing = layout.tile_source("g1", 1) if lost == "a tile" else layout.source_norm("g1")
    missing.unlink()
    _no_backend(monkeypatch)
    summary = _run(finished, tiny_model, tmp_path, scale="auto")
    assert missing.is_file(), "cut again"
    assert _masks(finished) == before and summary.tiles_reused == summary.tiles == len(before)
    assert (finished / "tiles_stitched" / "g1" / "mask.tiff").is_file()


def test_the_masks_said_to_be_kept_are_kept_when_the_scale_is_spelt_otherwise(
        finished: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` chose 1; the rerun says 1, and a tile went missing: the masks were cleared and remade."""
    layout = DatasetLayout(finished)
    before = _masks(finished)
    layout.tile_source("g1", 0).unlink()
    _no_backend(monkeypatch)
    summary = _run(finished, tiny_model, tmp_path, scale=1.0)
    assert _masks(finished) == before and summary.tiles_reused == len(before)


def test_tile_and_stitched_folders_linked_to_another_disk_stay_linked_and_kept(
        tmp_path: Path, tiny_model: Path) -> None:
    """Emptied through the link, not deleted: a dangling link made every later run fail (EEXIST)."""
    dataset = make_dataset(tmp_path / "ds", {"g1": (150, 170)})
    elsewhere = {name: tmp_path / "other-disk" / name for name in ("tiles", "tiles_stitched")}
    for name, target in elsewhere.items():
        target.mkdir(parents=True)
        (target / "left-by-an-older-input.png").write_bytes(b"stale")
        (dataset / name).mkdir()
        (dataset / name / "g1").symlink_to(target, target_is_directory=True)
    for settings in ({}, {"norm_high_pct": 98.0}):  # the second: new settings, every output made again
        summary = _run(dataset, tiny_model, tmp_path, **settings)
        assert summary.tiles > 1 and summary.tiles_reused == 0
        for name, target in elsewhere.items():
            assert (dataset / name / "g1").is_symlink() and os.path.samefile(dataset / name / "g1", target)
            assert not (target / "left-by-an-older-input.png").exists()
        assert len(mask_files(dataset, "g1")) == summary.tiles
        assert (elsewhere["tiles_stitched"] / "mask.tiff").is_file()


def test_the_embedded_endpoints_tile_queues_go_with_it(tmp_path: Path, tiny_model: Path) -> None:
    """moto's state outlives an endpoint in the same process, and so does a stopped worker's long poll:
    a queue left behind lent the next run's first message to that poll for the visibility timeout
    (a second run of 12 tiles took 121 s instead of 6)."""
    dataset = make_dataset(tmp_path / "ds", {"g1": (150, 170)})
    _run(dataset, tiny_model, tmp_path)
    with EmbeddedEndpoint() as later:  # the same process-wide state, seen through a new endpoint
        names = [url.rsplit("/", 1)[-1] for url in ClientFactory(endpoint_url=later.url, region=SETTINGS.region)
                 .sqs().list_queues().get("QueueUrls", [])]
    assert SETTINGS.queue_name not in names and SETTINGS.dead_letter_queue_name not in names


@pytest.mark.parametrize("change", [{"norm_high_pct": 98.0}, {"tile_overlap": 8}, {"scale": 1.25}])
def test_a_rerun_with_other_settings_normalises_the_image_once_and_resumes_nothing(
        finished: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, change: dict[str, object]) -> None:
    """Every mask in place, but of other settings: the group had been normalised once to find that
    out, before any worker started, then again to be cut, and the log said it resumed a run."""
    normalised: list[str] = []
    real_normalize = am.prepare.normalize

    def counted(image, **kwargs: object):
        normalised.append(str(kwargs.get("name")))
        return real_normalize(image, **kwargs)

    monkeypatch.setattr(am.prepare, "normalize", counted)
    caplog.set_level("INFO")
    summary = _run(finished, tiny_model, tmp_path, **change)
    assert len(normalised) == 1, normalised
    assert summary.tiles_reused == 0 and len(mask_files(finished, "g1")) == summary.tiles
    assert not any("resuming" in record.getMessage() for record in caplog.records)


def test_what_a_killed_run_was_writing_is_removed_by_the_next_run(finished: Path, tiny_model: Path,
                                                                  tmp_path: Path) -> None:
    """Temporary files of a run killed mid-write (kill -9, a power cut) in folders reruns keep, and the
    staging folder of a registration: a run that registers nothing, or reuses every tile, left them."""
    layout = DatasetLayout(finished)
    name = "." + "{}." + "0123456789abcdef" * 2 + ".tmp"
    litter = [layout.source_norm("g1").with_name(name.format("source.tiff")),
              layout.tile_plan("g1").with_name(name.format("meta.json")),
              layout.stitched_mask("g1").with_name(name.format("mask.tiff"))]
    for path in litter:
        path.write_bytes(b"half a file")
    staging = layout.am_coords_staging("g1")
    staging.mkdir(parents=True)
    (staging / "am_coordinates.png").write_bytes(b"half a file")
    kept = layout.stitched_dir("g1") / ".notes.txt"  # not named as the pipeline names its temporaries
    kept.write_text("mine")
    summary = _run(finished, tiny_model, tmp_path, scale="auto")
    assert summary.tiles_reused == summary.tiles
    assert not any(path.exists() for path in litter) and not staging.exists()
    assert kept.read_text() == "mine"
