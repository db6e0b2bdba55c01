"""Model-only figures: tiles per second through the Predictor, the arithmetic per tile, mask agreement.

Timing on CUDA comes from the Predictor's CUDA events (device time, not host time), and every
call synchronises before it returns, so no work is left uncounted::

    result = model_throughput(predictor, tiles=batch, iterations=20)
    result.model_tiles_per_s        # normalise + forward + threshold, device time
    gflop = gflop_per_tile(predictor.meta, tile_size=512)
"""

from __future__ import annotations

import logging
import re
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from am.errors import InputError
from am.model.build import build_model
from am.model.checkpoint import ModelMeta
from am.model.device import device_problem
from am.model.predict import Predictor, PredictTimes

log = logging.getLogger(__name__)

# Dense tensor-core peak (TFLOP/s, no sparsity) of GPUs likely to run workers, from NVIDIA's data
# sheets (half the "with sparsity" figure where a sheet gives only that): H100 (SXM 1979, PCIe
# 1513, NVL 1671 sparse), H200 (SXM 1979, NVL 1671 sparse), A100 312, L4 242 sparse, L40S 362.05,
# T4 65 (mixed precision FP16/FP32). The T4 has no bf16 tensor cores, so no bf16 peak. A GPU not
# listed (the A10G, with no public data sheet; the L40) gets none: pass --peak-tflops for it.
# Used for "how far from the arithmetic limit" when --peak-tflops is not given; a name is matched
# by whole words (:func:`peak_tflops`), so "L4" is not the L40S.
_TENSOR_PEAKS = {"H100 PCIe": 756.0, "H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 SXM5": 989.0,
                 "H100 NVL": 835.0, "H200": 989.0, "H200 NVL": 835.0, "A100": 312.0, "L4": 121.0, "L40S": 362.0}
PEAK_TFLOPS = {
    "fp16": {**_TENSOR_PEAKS, "T4": 65.0},
    "bf16": dict(_TENSOR_PEAKS),
}
WARMUP_CALLS = 2


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` this machine lacks before any model is loaded: torch would otherwise
    fail deep inside the first transfer with a message that does not name the option."""
    if device is None:
        return
    problem = device_problem(device)
    if problem is not None:
        raise InputError(f"--device {device}: {problem}")


@dataclass(frozen=True)
class ModelResult:
    """Throughput of ``Predictor.predict`` on tiles already in host memory."""

    tiles: int
    wall_s: float
    times: PredictTimes

    @property
    def model_tiles_per_s(self) -> float:
        """The model alone: normalisation, forward pass and threshold (device time on CUDA)."""
        return self.tiles / self.times.compute if self.times.compute else 0.0

    @property
    def predict_tiles_per_s(self) -> float:
        """The whole ``predict`` call from uint8 host tiles to uint8 host masks (H2D and D2H included)."""
        return self.tiles / self.wall_s if self.wall_s else 0.0


def model_throughput(predictor: Predictor, *, tiles: np.ndarray, iterations: int) -> ModelResult:
    """Run ``predict`` on the same batch ``iterations`` times after a warm-up; the batch is one forward pass.

    The calls run on a thread of their own, as in the worker's compute stage: on a busy CPU,
    torch's intra-op threads behave very differently on the main thread (a 2-thread model ran
    over ten times slower there than on a worker thread on a shared 2-core machine).
    """
    outcome: dict[str, object] = {}

    def measure() -> None:
        try:
            for _ in range(WARMUP_CALLS):
                predictor.predict(tiles)
            total = PredictTimes()
            start = time.perf_counter()
            for _ in range(iterations):
                predictor.predict(tiles)
                total.add(predictor.last_times)
            outcome["result"] = ModelResult(tiles=total.tiles, wall_s=time.perf_counter() - start, times=total)
        except BaseException as exc:  # raised again on the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=measure, name="am-compute")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


def median_ms_per_tile(predictor: Predictor, tiles: np.ndarray, *, repeats: int) -> tuple[float, float]:
    """Median milliseconds per tile over ``repeats`` calls on ``tiles`` (one batch), and of that the
    post-processing's: the CPU figure the shipped model's 250 ms target is judged by.

    The median, after one warm-up call (the first allocates and picks kernels), so that a busy
    machine skews it less than a mean would.
    """
    batch = len(tiles)
    predictor.predict(tiles)
    times, postprocessing = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(tiles)
        times.append((time.perf_counter() - start) * 1000.0 / batch)
        postprocessing.append(predictor.last_times.postprocess * 1000.0 / batch)
    return statistics.median(times), statistics.median(postprocessing)


def gflop_per_tile(meta: ModelMeta, *, tile_size: int) -> float:
    """Floating-point operations of one forward pass on one tile (multiply and add counted apart), in GFLOP.

    Counted on the meta device, so nothing is computed and no memory is used.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(meta).eval()
        x = torch.zeros((1, meta.in_channels, tile_size, tile_size))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The data-sheet peak for a known GPU name, or None.

    A table name matches where its words appear one after another among the device name's
    (``NVIDIA A100-SXM4-80GB`` holds ``A100``); of several, the one of most words wins
    (``NVIDIA H200 NVL`` is the NVL, not the SXM ``H200``). Substrings once matched ``L4`` in
    ``NVIDIA L40S`` and reported a third of its peak.
    """
    words = _words(device_name)
    best: tuple[int, float] | None = None
    for name, tflops in PEAK_TFLOPS.get(precision, {}).items():
        wanted = _words(name)
        n = len(wanted)
        if any(words[i : i + n] == wanted for i in range(len(words) - n + 1)) and (best is None or n > best[0]):
            best = (n, tflops)
    return best[1] if best else None


def _words(name: str) -> list[str]:
    """A GPU name's words, case-folded: torch names them with spaces and hyphens (NVIDIA A100-SXM4-80GB)."""
    return [word for word in re.split(r"[\s_-]+", name.casefold()) if word]


def device_name(device: str) -> str:
    """What the figures were measured on, for the report: speeds mean nothing without it."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)"


def mask_agreement(fast: Predictor, reference: Predictor, images: np.ndarray) -> float:
    """Fraction of pixels on which two predictors' masks agree (the fast path against float32)."""
    same = 0
    for start in range(0, len(images), reference.batch_size):
        chunk = images[start : start + reference.batch_size]
        same += int((fast.predict(chunk) == reference.predict(chunk)).sum())
    return same / images.size


def synthetic_tiles(count: int, *, size: int, seed: int = 12345) -> np.ndarray:
    """``count`` normalised synthetic tiles of ``size`` px (seed 12345, pitch 20-85 px), as uint8 (N, size, size)."""
    from am.synth.dataset import iter_samples

    return np.stack([sample.image for sample in iter_samples(seed, count, size=size)])


__all__ = ["PEAK_TFLOPS", "ModelResult", "device_name", "gflop_per_tile", "mask_agreement", "median_ms_per_tile",
           "model_throughput", "peak_tflops", "synthetic_tiles"]
