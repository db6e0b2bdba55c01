"""The load test in small: a 2048 x 2048 image through the local backend with 2 workers, memory sampled.

The full 20000 x 20000 run is ``make load-test`` (benchmarks/load_test.py); this one keeps the
same code path in CI: every tile segmented once, a mask of exactly the input's size, and peak
memory per process within bounds that a leak or a full-size float copy would break.
"""

from __future__ import annotations

from pathlib import Path

from tests.scripts import load_script

from .harness import REPO

# The orchestrator holds the image, its normalised copy and the stitched mask (4 MB each here)
# next to its libraries (torch for the checkpoint check, moto for the endpoint): about 1 GB.
ORCHESTRATOR_LIMIT_MIB = 1600
# A worker: torch, the model and one batch of 512 px tiles.
WORKER_LIMIT_MIB = 1600


def test_small_load_run_completes_with_bounded_memory(tmp_path: Path, tiny_model: Path):
    load_test = load_script(REPO / "benchmarks" / "load_test.py")
    report = load_test.run_load_test(size=2048, workers=2, model=tiny_model, work_dir=tmp_path, timeout_s=300)
    print(report.table())
    assert report.ok, report.table() + "\n" + report.stderr_tail
    assert report.tiles == 25 == report.segmented
    assert sorted(report.worker_peak_mib) == [0, 1]
    assert 0 < report.orchestrator_peak_mib < ORCHESTRATOR_LIMIT_MIB, report.table()
    assert all(0 < mib < WORKER_LIMIT_MIB for mib in report.worker_peak_mib.values()), report.table()
