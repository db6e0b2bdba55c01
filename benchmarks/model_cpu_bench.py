"""CPU inference speed of a checkpoint: milliseconds per 512x512 tile at batch 1 and batch 4.

    python benchmarks/model_cpu_bench.py [--model am/models/default.pt] [--threads 2] [--repeats 10] [--tta d4]

The target for the shipped default is at most 250 ms per tile on a 2-core laptop CPU, without
test-time augmentation (``--tta`` shows what its 4 or 8 views cost).
Reports the median over repeats (after warm-up), so a busy machine skews it less.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from am.errors import AmError
from am.messages import TTA_MODES
from am.model.checkpoint import default_model_path
from am.model.predict import Predictor

TARGET_MS = 250.0


def bench(predictor: Predictor, *, batch: int, repeats: int, tile: int = 512) -> float:
    """Median milliseconds per tile for batches of ``batch`` tiles."""
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(batch, tile, tile), dtype=np.uint8)
    predictor.predict(tiles)  # warm-up: first call allocates and picks kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(tiles)
        times.append((time.perf_counter() - start) * 1000.0 / batch)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tta", choices=TTA_MODES, default="off", help="test-time augmentation (default off)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    model = args.model or default_model_path()
    try:
        predictor = Predictor.from_checkpoint(model, device="cpu", threads=args.threads, batch_size=4,
                                              tta=args.tta)
    except AmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size_mb = Path(model).stat().st_size / 1e6
    print(f"model {model}: {predictor.meta.encoder}, {size_mb:.1f} MB, {args.threads} threads, "
          f"cores {os.cpu_count()}, test-time augmentation {args.tta}")
    worst = 0.0
    for batch in (1, 4):
        ms = bench(predictor, batch=batch, repeats=args.repeats)
        worst = max(worst, ms)
        print(f"batch {batch}: {ms:7.1f} ms per 512x512 tile (median of {args.repeats})")
    if args.tta == "off":
        print(f"target <= {TARGET_MS:.0f} ms per tile: {'PASS' if worst <= TARGET_MS else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
