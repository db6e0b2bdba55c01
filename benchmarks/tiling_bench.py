"""Benchmark: plan, split and stitch a large uint8 image; prints wall time per step and peak RSS.

    python benchmarks/tiling_bench.py --size 20000 --tile-size 512 --overlap 128

Stitching writes into one preallocated output, so peak memory should stay near two images
(source and output) plus a tile.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

from am.tiling import Stitcher, plan_tiles, split


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="image height and width in px (default 20000)")
    parser.add_argument("--tile-size", type=int, default=512, help="tile side in px (default 512)")
    parser.add_argument("--overlap", type=int, default=128, help="tile overlap in px (default 128)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    image = np.empty((args.size, args.size), dtype=np.uint8)
    rng = np.random.default_rng(0)
    for r0 in range(0, args.size, 1024):
        image[r0 : r0 + 1024] = rng.integers(0, 256, image[r0 : r0 + 1024].shape, dtype=np.uint8)
    made = time.perf_counter()
    print(f"image {args.size} x {args.size} uint8 made in {made - start:.2f} s, peak RSS {_peak_rss_mib():.0f} MiB")

    plan = plan_tiles(args.size, args.size, tile_size=args.tile_size, overlap=args.overlap)
    planned = time.perf_counter()
    print(f"plan: {plan.rows} x {plan.cols} = {len(plan)} tiles in {planned - made:.3f} s")

    stitcher = Stitcher(plan)
    for tile, pixels in split(image, plan):
        stitcher.add(tile.index, pixels)
    out = stitcher.finalize()
    stitched = time.perf_counter()
    print(f"split + stitch: {stitched - planned:.2f} s ({(stitched - planned) / len(plan) * 1e3:.2f} ms per tile); "
          f"peak RSS {_peak_rss_mib():.0f} MiB (one image is {image.nbytes / 2**20:.0f} MiB)")

    # Compare in row blocks so the check itself adds no full-size temporary.
    identical = all(np.array_equal(out[r0 : r0 + 1024], image[r0 : r0 + 1024]) for r0 in range(0, args.size, 1024))
    print(f"identical: {identical}; total {time.perf_counter() - start:.2f} s, peak RSS {_peak_rss_mib():.0f} MiB")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
