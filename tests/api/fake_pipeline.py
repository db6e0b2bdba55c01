"""A stand-in for ``python -m am.pipeline`` in the task runner's tests: ``fake_pipeline.py DATASET MODE``.

The runner only starts a process and reads its exit status, its log and the stitched mask, so
these few behaviours are all its tests need, in a fraction of a second each:

    ok      write a small stitched mask and exit 0
    wait    wait until DATASET/go exists (the test says when), then as ok
    fail    log an ERROR record as the pipeline does (on stderr) and exit 3
    kill    die by SIGKILL without logging anything (what the OOM killer does)
    misfit  as ok with the segmentation overlay, then fail registration as the pipeline does for rows and
            cols that do not fit
    blank   as misfit, failing registration as the pipeline does for a mask without marks
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

# Run as a script by the runner: the repository is not necessarily on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from am.dataset import DatasetLayout
from am.imageio import write_png, write_tiff

WAIT_LIMIT_S = 60.0
MASK_SHAPE = (60, 80)
REGISTRATION_ERRORS = {
    "misfit": "the grid was given 60 x 60 = 3600 positions but the mask holds only 20 marks (connected components, "
              "before any joined marks are cut apart): check --rows/--cols",
    "blank": "the 80 x 60 px mask is empty: no mark to register; check that the image shows the ablation marks",
}


def main(dataset: Path, mode: str) -> int:
    if mode == "wait":
        deadline = time.monotonic() + WAIT_LIMIT_S
        while not (dataset / "go").exists():
            if time.monotonic() > deadline:
                print(f"12:00:00 ERROR am.pipeline: nobody created {dataset / 'go'}", file=sys.stderr, flush=True)
                return 4
            time.sleep(0.02)
    if mode == "fail":
        print("12:00:00 ERROR am.pipeline: the fake pipeline failed on purpose", file=sys.stderr, flush=True)
        return 3
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    import numpy as np

    write_tiff(DatasetLayout(dataset).stitched_mask("image"), np.full(MASK_SHAPE, 255, np.uint8))
    if mode in REGISTRATION_ERRORS:
        # The pipeline draws the segmentation overlay while registration runs, and waits for it.
        write_png(DatasetLayout(dataset).stitched_overlay("image"), np.full((*MASK_SHAPE, 3), 128, np.uint8))
        print(f"12:00:01 ERROR am.pipeline: group image: registration failed: {REGISTRATION_ERRORS[mode]}",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
