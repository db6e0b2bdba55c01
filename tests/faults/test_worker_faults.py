"""Workers dying or told to stop in the middle of a job (faults 1, 2 and 7), on the local backend.

Each test runs the real command with two real worker subprocesses and checks the outcome a
user sees: every tile correct, or a clear error within a bounded time, and nothing left running.
"""

from __future__ import annotations

import os
import re
import signal
import time

from .harness import PipelineRun, assert_nothing_left, assert_same_as_undisturbed, make_dataset

VISIBILITY_S = 30  # the SQS minimum, and what these runs use
# Batches of eight keep a worker holding messages almost all the time, so a kill lands mid-batch.
BUSY = {"AM_BATCH_SIZE": "8", "AM_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S)}


def test_worker_killed_mid_batch_its_tiles_come_back_and_the_mask_is_unchanged(tmp_path, tiny_model, predictor):
    """Fault 1: SIGKILL loses the messages a worker holds until their visibility timeout; another worker does them."""
    dataset = make_dataset(tmp_path / "ds", {"g1": (1000, 1000)})
    with PipelineRun(dataset, tiny_model, tmp_path, "--no-register", env=BUSY) as run:
        victim, _log = run.wait_for_first_batch()
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        assert run.wait(timeout=180) == 0, run.stderr[-4000:]
        after_kill = time.monotonic() - killed_at

    # The held tiles came back only after their visibility timeout (extended by the dead worker's
    # last heartbeat, at most a third of it before the kill), and the survivor finished them.
    assert after_kill >= VISIBILITY_S * 2 / 3 - 1, f"job ended {after_kill:.1f} s after the kill: nothing was held?"
    assert "121 tile(s) segmented" in run.stdout
    assert_same_as_undisturbed(dataset, "g1", predictor)
    assert_nothing_left(run)


def test_a_survivor_with_little_idle_patience_waits_for_the_tiles_a_killed_worker_held(tmp_path, tiny_model,
                                                                                     predictor):
    """Fault 1 with workers that leave after 2 s without work: the dead worker's tiles stay hidden for
    up to a visibility timeout, and the survivor must not leave before they come back."""
    dataset = make_dataset(tmp_path / "ds", {"g1": (1000, 1000)})
    with PipelineRun(dataset, tiny_model, tmp_path, "--no-register", env={**BUSY, "AM_IDLE_EXIT_S": "2"}) as run:
        victim, _log = run.wait_for_first_batch()
        os.kill(victim, signal.SIGKILL)
        # Worker logs go with the run's temporary folder: read the survivor's while it runs.
        run.wait_until(lambda: any(pid != victim and log.is_file() and "are held by other workers: waiting up to "
                                   f"{VISIBILITY_S} s more" in log.read_text(errors="replace")
                                   for pid, log in run.workers().values()),
                       timeout=60, what="the survivor waiting for the tiles the killed worker held")
        assert run.wait(timeout=180) == 0, run.stderr[-4000:]

    assert "121 tile(s) segmented" in run.stdout
    assert_same_as_undisturbed(dataset, "g1", predictor)
    assert_nothing_left(run)


def test_all_workers_killed_the_job_fails_fast_naming_what_is_pending(tmp_path, tiny_model):
    """Fault 2 (local): with no worker alive the orchestrator stops waiting within seconds and says why."""
    dataset = make_dataset(tmp_path / "ds", {"g1": (500, 500)})
    with PipelineRun(dataset, tiny_model, tmp_path, "--no-register", env={"AM_TIMEOUT_BASE_S": "3600"}) as run:
        pids = [run.wait_for_worker(0), run.wait_for_worker(1)]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        code = run.wait(timeout=60)
        noticed_after = time.monotonic() - killed_at

    assert code == 1, run.stderr[-4000:]
    # Health is checked every 5 s; a long poll of 2 s may delay the check a little, and a loaded machine
    # the start of the orchestrator's exit. Against the hour-long timeout, 20 s is still "at once".
    assert noticed_after < 20, f"took {noticed_after:.1f} s to notice that no worker is alive"
    pending = re.search(r"all workers stopped while (\d+) tile\(s\) were pending", run.stderr)
    assert pending and int(pending.group(1)) > 0, run.stderr[-4000:]
    assert "rerun the same command to resume" in run.stderr
    assert "worker 0 was killed by SIGKILL (the out-of-memory killer sends it)" in run.stderr
    assert "worker 1 was killed by SIGKILL" in run.stderr
    assert not (dataset / "tiles_stitched" / "g1" / "mask.tiff").exists()
    assert_nothing_left(run)


def test_worker_sigterm_mid_batch_finishes_it_exits_0_and_loses_no_tile(tmp_path, tiny_model, predictor):
    """Fault 7: an ECS stop or Spot interruption sends SIGTERM; the worker settles its batch and exits 0."""
    dataset = make_dataset(tmp_path / "ds", {"g1": (1000, 1000)})
    with PipelineRun(dataset, tiny_model, tmp_path, "--no-register", env=BUSY) as run:
        victim, log = run.wait_for_first_batch()
        os.kill(victim, signal.SIGTERM)
        stopped_at = time.monotonic()
        run.wait_until(lambda: "exits with" in log.read_text(errors="replace"), timeout=30,
                       what="the stopped worker's closing line")
        stop_s = time.monotonic() - stopped_at
        closing = log.read_text(errors="replace")
        assert run.wait(timeout=120) == 0, run.stderr[-4000:]
        after_stop = time.monotonic() - stopped_at

    # Within ECS's default stop timeout (30 s), with exit code 0.
    assert stop_s < 30 and re.search(r"worker \S+ exits with 0", closing), closing[-2000:]
    # Nothing it held had to wait for a visibility timeout: its batch was finished or released.
    assert after_stop < VISIBILITY_S * 2 / 3, f"job took {after_stop:.1f} s after the SIGTERM"
    assert "121 tile(s) segmented" in run.stdout
    assert_same_as_undisturbed(dataset, "g1", predictor)
    assert_nothing_left(run)
