"""Encoding time and size of the files a run writes, per PNG row filter, and of the normalised TIFF.

    python benchmarks/png_bench.py DATASET GROUP [--tiles 40]

Run it on a dataset ``am.pipeline`` has finished (with ``--no-register`` or without): it reads
the group's tile and mask PNGs, its normalised source and stitched mask, and encodes them again
the way the pipeline does (zlib level 1; tiles Huffman-only) with each row filter, then writes
the normalised source as TIFF with and without zlib.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from am.dataset import DatasetLayout
from am.imageio import PNG_ROW_FILTERS, encode_png, read_image, write_tiff
from am.overlay import mask_overlay


def _timed(encode: Callable[[np.ndarray], bytes], images: list[np.ndarray]) -> tuple[float, float]:
    """Mean seconds and mean bytes per image."""
    started = time.perf_counter()
    sizes = [len(encode(image)) for image in images]
    return (time.perf_counter() - started) / len(images), sum(sizes) / len(images)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path, help="dataset folder of a finished run (its tiles are encoded)")
    p.add_argument("group", help="group whose tiles and masks are encoded")
    p.add_argument("--tiles", type=int, default=40, help="tile and mask files to encode (default 40)")
    args = p.parse_args(argv)
    layout = DatasetLayout(args.dataset)
    tile_dir = layout.tile_source(args.group, 0).parent
    mask_dir = layout.tile_mask(args.group, 0).parent
    tiles = [read_image(path) for path in sorted(tile_dir.glob("*.png"))[:args.tiles]]
    masks = [read_image(path) for path in sorted(mask_dir.glob("*.png"))[:args.tiles]]
    if not tiles or not masks or not layout.stitched_mask(args.group).is_file():
        print(f"{args.dataset} group {args.group} has no finished run to read (tiles, masks, stitched mask)",
              file=sys.stderr)
        return 2
    source = read_image(layout.source_norm(args.group))
    overlay = mask_overlay(source, read_image(layout.stitched_mask(args.group)))
    cases = {
        f"tile ({len(tiles)})": (tiles, {"huffman_only": True}),
        f"mask ({len(masks)})": (masks, {}),
        f"overlay {overlay.shape[1]}x{overlay.shape[0]}": ([overlay], {"bgr": True}),
    }
    for name, (images, options) in cases.items():
        for row_filter in PNG_ROW_FILTERS:
            seconds, size = _timed(lambda image, f=row_filter, o=options: encode_png(
                image, compression=1, row_filter=f, **o), images)
            print(f"{name:24s} {row_filter:9s} {seconds * 1000:9.1f} ms {size / 1000:10.0f} KB")
    with tempfile.TemporaryDirectory() as tmp:
        for compress in (True, False):
            path = Path(tmp) / f"source-{compress}.tiff"
            started = time.perf_counter()
            write_tiff(path, source, compress=compress)
            print(f"normalised TIFF {source.shape[1]}x{source.shape[0]} {'zlib' if compress else 'raw':4s} "
                  f"{time.perf_counter() - started:6.2f} s {path.stat().st_size / 1e6:8.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
