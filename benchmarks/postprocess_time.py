"""How long making masks from a checkpoint's probabilities takes, image by image, and the slowest ones.

    python benchmarks/postprocess_time.py [--model am/models/default.pt] [--images 48] [--seed 1000]
        [--device cpu] [--threads 2] [--repeats 3] [--worst 3]

Training validates every epoch on whole images and workers post-process every tile, so one
probability map that makes a step slow (as scikit-image's watershed line once did, for seconds to
minutes, on a half-trained model's output) stalls a run without failing it. The images are those
``am.train --synthetic-valid`` validates on (seed 1000, 512 px, pitch 20-85 px): probabilities are
computed for every image first, untimed, and only ``mask_from_proba`` is timed, with OpenCV on a worker's
thread count and the best of ``--repeats`` runs per image (one run reads the machine's noise as
much as the step). Prints the total, the median and the slowest images, so a checkpoint whose
training stalled can be checked here.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tqdm import tqdm

from am.errors import AmError
from am.model.checkpoint import default_model_path
from am.model.masks import mask_from_proba
from am.model.predict import Predictor
from am.model.whole import predict_image_proba
from am.train.data import synthetic_images
from am.worker.worker import OPENCV_THREADS, opencv_threads_of_a_worker


def time_postprocessing(predictor: Predictor, *, images: int, seed: int,
                        repeats: int = 1) -> list[tuple[int, float, int]]:
    """(image index, best seconds of ``repeats``, mask pixels) of ``mask_from_proba`` for each generated image."""
    # The generator's default pitch range is the one am.train renders and validates on.
    items = synthetic_images(count=images, size=512, seed=seed)
    # All probabilities first, so that nothing but post-processing runs while it is timed.
    probas = [predict_image_proba(predictor, item.image, tile_size=predictor.meta.tile_size, overlap=64)
              for item in tqdm(items, desc="probabilities", unit="image")]
    timings = []
    with opencv_threads_of_a_worker():
        for index, proba in enumerate(tqdm(probas, desc="post-processing", unit="image")):
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                mask = mask_from_proba(proba, predictor.meta)
                best = min(best, time.perf_counter() - start)
            timings.append((index, best, int(mask.sum())))
    return timings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--images", type=int, default=48, help="validation images to time (default 48)")
    p.add_argument("--seed", type=int, default=1000, help="generator seed (default 1000, training's validation)")
    p.add_argument("--device", default="cpu", help="where the probabilities are computed (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs per image, the fastest counted (default 3)")
    p.add_argument("--worst", type=int, default=3, help="slowest images to list (default 3)")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error("--images must be at least 1")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    model = args.model or default_model_path()
    try:
        predictor = Predictor.from_checkpoint(model, device=args.device, threads=args.threads, precision="fp32")
        timings = time_postprocessing(predictor, images=args.images, seed=args.seed, repeats=args.repeats)
    except AmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = [s for _, s, _ in timings]
    print(f"model {model} ({predictor.meta.encoder}): post-processing of {len(timings)} images of 512 px "
          f"(seed {args.seed}, OpenCV on {OPENCV_THREADS} thread, best of {args.repeats} runs): "
          f"total {sum(seconds):.2f} s, median {statistics.median(seconds) * 1000:.1f} ms, "
          f"slowest {max(seconds) * 1000:.1f} ms")
    for index, s, pixels in sorted(timings, key=lambda t: -t[1])[: args.worst]:
        print(f"  image {index}: {s * 1000:.1f} ms, {pixels} mask pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
