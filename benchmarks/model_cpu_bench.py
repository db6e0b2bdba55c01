"""CPU inference speed of a checkpoint: milliseconds per 512x512 tile at batch 1 and batch 4.

    python benchmarks/model_cpu_bench.py [--model am/models/default.pt] [--threads 2] [--repeats 10] [--tta d4]
                                         [--postprocess off] [--precision fp32]

The target for the shipped default is at most 250 ms per tile on a 2-core laptop CPU, without
test-time augmentation (``--tta`` shows what its 4 or 8 views cost). The tiles are the first
images of the synthetic held-out set, not noise: post-processing (cutting touching marks apart,
dropping specks) costs what the marks in a tile make it cost, and the figure says how much of
each tile's time it took.
Reports the median over repeats (after warm-up), so a busy machine skews it less. ``--precision``
auto is what workers use on a CPU: bf16 where it has AMX tile units, fp32 elsewhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from am.bench.model import median_ms_per_tile
from am.cli import PRECISIONS, add_postprocess_option, add_precision_option, masks_label, threads_problem
from am.errors import AmError
from am.evaluate.heldout import held_out_images
from am.messages import TTA_MODES
from am.model.checkpoint import default_model_path
from am.model.predict import Predictor

TARGET_MS = 250.0


def bench(predictor: Predictor, *, batch: int, repeats: int) -> tuple[float, float]:
    """Median milliseconds per tile for batches of ``batch`` held-out tiles, and of that the post-processing's."""
    tiles = np.stack([item.image for item in held_out_images(batch)])
    return median_ms_per_tile(predictor, tiles, repeats=repeats)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=10,
                   help="timed calls per batch size; the median is kept (default 10)")
    p.add_argument("--tta", choices=TTA_MODES, default="off", help="test-time augmentation (default off)")
    add_precision_option(p, tuple(m for m in PRECISIONS if m != "fp16"))
    add_postprocess_option(p)
    args = p.parse_args(argv)
    if args.repeats < 1:  # the median of no timings does not exist
        p.error(f"--repeats {args.repeats}: give at least 1")
    if problem := threads_problem(args.threads):
        p.error(problem)
    logging.basicConfig(level=logging.WARNING)
    model = args.model or default_model_path()
    try:
        predictor = Predictor.from_checkpoint(model, device="cpu", threads=args.threads, batch_size=4,
                                              tta=args.tta, postprocess=args.postprocess == "on",
                                              precision=args.precision)
    except AmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size_mb = Path(model).stat().st_size / 1e6
    print(f"model {model}: {predictor.meta.encoder}, {size_mb:.1f} MB, {args.threads} threads, "
          f"cores {os.cpu_count()}, {predictor.precision}, test-time augmentation {args.tta}, "
          f"{masks_label(predictor.postprocess)}")
    worst = 0.0
    for batch in (1, 4):
        ms, postprocessing = bench(predictor, batch=batch, repeats=args.repeats)
        worst = max(worst, ms)
        print(f"batch {batch}: {ms:7.1f} ms per 512x512 tile (median of {args.repeats}; "
              f"post-processing {postprocessing:.1f} ms of it)")
    if args.tta == "off":
        print(f"target <= {TARGET_MS:.0f} ms per tile: {'PASS' if worst <= TARGET_MS else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
