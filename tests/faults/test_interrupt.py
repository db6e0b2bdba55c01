"""Ctrl-C on the orchestrator mid-job (fault 5): workers stopped, job data cleaned, masks kept, rerun resumes.

The first run talks to an endpoint the test owns, so that after the interrupt the test can look
into the buckets and queues the job used; the rerun uses the embedded endpoint, as a user's would.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from am.transport.clients import ClientFactory
from am.transport.storage import Storage

from .harness import PipelineRun, assert_nothing_left, assert_same_as_undisturbed, make_dataset, mask_files, run_to_end

SIDE = 1500
TOTAL_TILES = 256  # 16 x 16 tiles of 128 px overlapping by 32 on a 1500 px image


def _slow(endpoint: str) -> dict[str, str]:
    """One tile per message and per batch, one thread, and a few hundred tiles: masks arrive a few at
    a time and the job is surely mid-way when interrupted, however fast the workers are. Every tile
    goes out at once (no in-flight window), so the group is fully cut before the workers are up: a
    rerun resumes only groups whose cutting finished."""
    return {"AM_ENDPOINT_URL": endpoint, "AM_BATCH_SIZE": "1", "AM_WORKER_THREADS": "1",
            "AM_TILES_PER_MESSAGE": "1", "AM_MAX_TILES_IN_FLIGHT": str(TOTAL_TILES)}


def _wait_for_a_sealed_job_and_five_masks(run: PipelineRun, dataset: Path) -> None:
    run.wait_until(lambda: f"{TOTAL_TILES} tile(s) on the local backend" in run.stderr
                   and len(mask_files(dataset, "g1")) >= 5, timeout=120, what="a sealed job and five masks")


def _assert_job_data_deleted(run: PipelineRun, endpoint: str) -> None:
    """The job's S3 prefixes and its results queue are gone (keep_job_data is off by default)."""
    job = re.search(r"job (\S+) started", run.stderr).group(1)
    clients = ClientFactory(endpoint_url=endpoint)
    storage = Storage(clients.s3())
    for bucket in ("am-segm-input", "am-segm-output"):
        assert list(storage.list_keys(bucket, f"{job}/")) == [], f"s3://{bucket}/{job}/ was not cleaned"
    queues = clients.sqs().list_queues().get("QueueUrls", [])
    assert not [url for url in queues if url.endswith(job)], "the job's results queue was not deleted"


def test_sigint_mid_job_stops_workers_cleans_the_job_and_a_rerun_resumes(tmp_path, tiny_model, predictor,
                                                                         moto_server):
    dataset = make_dataset(tmp_path / "ds", {"g1": (SIDE, SIDE)})
    with PipelineRun(dataset, tiny_model, tmp_path, "--no-register", env=_slow(moto_server)) as run:
        _wait_for_a_sealed_job_and_five_masks(run, dataset)
        run.proc.send_signal(signal.SIGINT)
        interrupted_at = time.monotonic()
        code = run.wait(timeout=60)
        stop_s = time.monotonic() - interrupted_at

    assert code == 130, run.stderr[-4000:]
    assert stop_s < 30, f"took {stop_s:.1f} s to stop after Ctrl-C"
    assert "interrupted; cleaned up, finished work is kept, rerun the same command to resume" in run.stderr
    assert "stopped 2 worker process(es)" in run.stderr
    assert_nothing_left(run)
    kept = len(mask_files(dataset, "g1"))
    assert 5 <= kept < TOTAL_TILES, f"{kept} masks kept"
    assert not (dataset / "tiles_stitched" / "g1").exists(), "an interrupted job presented a stitched mask"

    _assert_job_data_deleted(run, moto_server)

    again = run_to_end(dataset, tiny_model, tmp_path, "--no-register")
    assert again.proc.returncode == 0, again.stderr[-4000:]
    assert again.job_tiles() == [TOTAL_TILES - kept], "the rerun did not resume where the first run stopped"
    assert_same_as_undisturbed(dataset, "g1", predictor)
    assert_nothing_left(again)


def test_sigint_while_the_group_is_still_being_cut_keeps_its_masks_and_a_rerun_resumes(tmp_path, tiny_model,
                                                                                     predictor, moto_server):
    dataset = make_dataset(tmp_path / "ds", {"g1": (SIDE, SIDE)})
    # A window of 8 tiles in flight: the orchestrator cuts the next row only as masks come back, so
    # it is still cutting (the job not sealed) when the first masks are on disk.
    slow = {"AM_ENDPOINT_URL": moto_server, "AM_BATCH_SIZE": "1", "AM_WORKER_THREADS": "1",
            "AM_TILES_PER_MESSAGE": "1", "AM_MAX_TILES_IN_FLIGHT": "8"}
    with PipelineRun(dataset, tiny_model, tmp_path, "--no-register", env=slow) as run:
        run.wait_until(lambda: len(mask_files(dataset, "g1")) >= 5, timeout=120, what="five masks")
        run.proc.send_signal(signal.SIGINT)
        code = run.wait(timeout=60)
    assert code == 130, run.stderr[-4000:]
    assert f"{TOTAL_TILES} tile(s) on the local backend" not in run.stderr, "the group was cut before the interrupt"
    assert "finished work is kept, rerun the same command to resume" in run.stderr
    kept = len(mask_files(dataset, "g1"))
    assert 5 <= kept < TOTAL_TILES, f"{kept} masks kept"

    again = run_to_end(dataset, tiny_model, tmp_path, "--no-register")
    assert again.proc.returncode == 0, again.stderr[-4000:]
    assert "resuming an interrupted run" in again.stderr
    assert again.job_tiles() == [TOTAL_TILES - kept], "the rerun cut and segmented the kept tiles again"
    assert_same_as_undisturbed(dataset, "g1", predictor)
    assert_nothing_left(again)


def test_sigint_twice_still_cleans_the_job_up_and_keeps_the_reported_masks(tmp_path, tiny_model, moto_server):
    """Ctrl-C pressed again while the workers stop (``timeout -s INT`` also delivers its signal twice)."""
    dataset = make_dataset(tmp_path / "ds", {"g1": (SIDE, SIDE)})
    with PipelineRun(dataset, tiny_model, tmp_path, "--no-register", env=_slow(moto_server)) as run:
        _wait_for_a_sealed_job_and_five_masks(run, dataset)
        run.proc.send_signal(signal.SIGINT)
        # Sent only once the first was handled, or the two could merge into one: the clean-up has begun
        # when a worker was told to stop. It goes on for a while after that (the workers finish their
        # batch, the reports are collected, the job's data is deleted).
        run.wait_for_first_worker_logging("stopping:", what="a worker told to stop by the clean-up", timeout=60)
        run.proc.send_signal(signal.SIGINT)
        code = run.wait(timeout=60)

    assert code == 130, run.stderr[-4000:]
    assert "is cleaning up" in run.stderr and "Press Ctrl-C again" in run.stderr, run.stderr[-4000:]
    assert "stopped 2 worker process(es)" in run.stderr
    assert re.search(r"collected \d+ mask tile\(s\) reported while the job was interrupted", run.stderr)
    assert "interrupted; cleaned up, finished work is kept, rerun the same command to resume" in run.stderr
    assert_nothing_left(run)
    assert 5 <= len(mask_files(dataset, "g1")) < TOTAL_TILES

    _assert_job_data_deleted(run, moto_server)
