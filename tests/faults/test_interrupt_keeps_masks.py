"""Ctrl-C or SIGTERM mid-job keeps every mask a worker finished, the stopping workers' last ones included.

Workers told to stop finish the batch in hand, put its masks in the output bucket and report
them; those reports arrive after the interrupt, while nothing collects any more. The orchestrator
must collect what was reported before it deletes the job's data, or the README's "finished work
is kept" loses those masks and the rerun segments the tiles again.

The job keeps its data here (``keep_job_data``), so that after the interrupt the test can see
which masks reached the output bucket, on an endpoint the test owns.
"""

from __future__ import annotations

import re
import signal

import pytest

from am.transport.clients import ClientFactory
from am.transport.storage import Storage

from .harness import PipelineRun, assert_nothing_left, make_dataset, mask_files, run_to_end

SIDE = 1500
TOTAL_TILES = 256  # 16 x 16 tiles of 128 px overlapping by 32 on a 1500 px image
MASK_KEY = re.compile(r"/g1/(\d{4})\.npy$")


def tiles_in_output_bucket(endpoint: str, job: str) -> set[int]:
    """Tiles whose masks a worker put in the output bucket (one tile per object in these runs)."""
    keys = Storage(ClientFactory(endpoint_url=endpoint).s3()).list_keys("am-segm-output", f"{job}/")
    return {int(match.group(1)) for key in keys if (match := MASK_KEY.search(key))}


def tiles_on_disk(dataset) -> set[int]:
    return {int(path.stem) for path in mask_files(dataset, "g1")}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_every_mask_that_reached_the_output_bucket(tmp_path, tiny_model, moto_server, signum):
    dataset = make_dataset(tmp_path / "ds", {"g1": (SIDE, SIDE)})
    # One tile per message and per batch, and every tile sent at once: both workers are busy with a
    # batch whenever the signal comes, so their last masks are reported only after the interrupt.
    env = {"AM_ENDPOINT_URL": moto_server, "AM_BATCH_SIZE": "1", "AM_WORKER_THREADS": "1",
           "AM_TILES_PER_MESSAGE": "1", "AM_MAX_TILES_IN_FLIGHT": str(TOTAL_TILES), "AM_KEEP_JOB_DATA": "1"}
    with PipelineRun(dataset, tiny_model, tmp_path, "--no-register", env=env) as run:
        run.wait_until(lambda: f"{TOTAL_TILES} tile(s) on the local backend" in run.stderr
                       and len(mask_files(dataset, "g1")) >= 3, timeout=120, what="a sealed job and three masks")
        run.proc.send_signal(signum)
        code = run.wait(timeout=60)

    assert code == 130, run.stderr[-4000:]
    assert "interrupted; cleaned up, finished work is kept, rerun the same command to resume" in run.stderr
    assert_nothing_left(run)
    job = re.search(r"job (\S+) started", run.stderr).group(1)
    finished = tiles_in_output_bucket(moto_server, job)
    kept = tiles_on_disk(dataset)
    assert finished, "no mask reached the output bucket"
    lost = sorted(finished - kept)
    assert not lost, f"masks in s3://am-segm-output/{job}/ but not in the dataset: {lost}\n{run.stderr[-4000:]}"
    assert len(kept) < TOTAL_TILES, "the job finished before the interrupt"
    if signum != signal.SIGINT:
        return  # one rerun is enough: both signals end the job the same way

    again = run_to_end(dataset, tiny_model, tmp_path, "--no-register")
    assert again.proc.returncode == 0, again.stderr[-4000:]
    assert again.job_tiles() == [TOTAL_TILES - len(kept)], "the rerun segmented kept tiles again"
    assert len(mask_files(dataset, "g1")) == TOTAL_TILES
