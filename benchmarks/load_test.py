"""Load test: one large synthetic image through the local backend, with peak memory of every process.

Draws a SIZE x SIZE 8-bit lattice image (marks on a square grid, speckled background), runs
``python -m am.pipeline`` on it with the local backend and N worker processes, samples the
resident memory (RSS) of the orchestrator and of each worker while it runs, then checks the
output: exit 0, every tile segmented exactly once, a mask of exactly SIZE x SIZE. Prints a table::

    python benchmarks/load_test.py                      # 20000 x 20000, 2 workers (make load-test)
    python benchmarks/load_test.py --size 3000          # a quick one

The model is the tiny test U-Net (``am.model.build.write_test_checkpoint``: untrained, fast on a
CPU) unless ``--model`` names another: the point is the pipeline's throughput and memory, not
mask quality. The image is written once into ``--work-dir`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EVERY_S = 0.25
MiB = 1024 * 1024


@dataclass
class LoadReport:
    """What one run did and how much memory each of its processes needed at most."""

    size: int
    tiles: int
    segmented: int
    workers: int
    model: str
    returncode: int
    wall_s: float
    seconds: dict[str, float]
    orchestrator_peak_mib: float
    worker_peak_mib: dict[int, float] = field(default_factory=dict)
    total_peak_mib: float = 0.0
    mask_shape: tuple[int, ...] = ()
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.segmented == self.tiles and self.mask_shape == (self.size, self.size)

    def table(self) -> str:
        rows = [
            ("image", f"{self.size} x {self.size} px, 8-bit"),
            ("tiles", f"{self.tiles} ({self.segmented} segmented)"),
            ("workers", str(self.workers)),
            ("model", self.model),
            ("exit code", str(self.returncode)),
            ("wall time", f"{self.wall_s:.1f} s"),
            *((f"  {stage}", f"{secs:.1f} s") for stage, secs in self.seconds.items()),
            ("throughput", f"{self.segmented / self.seconds['prepare+segment']:.1f} tiles/s over prepare+segment"
             if self.seconds.get("prepare+segment") else "-"),
            ("peak RSS orchestrator", f"{self.orchestrator_peak_mib:.0f} MiB"),
            *((f"peak RSS worker {n}", f"{mib:.0f} MiB") for n, mib in sorted(self.worker_peak_mib.items())),
            ("peak RSS all processes", f"{self.total_peak_mib:.0f} MiB"),
            ("mask", " x ".join(map(str, self.mask_shape)) or "missing"),
            ("result", "OK" if self.ok else "FAILED"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def draw_image(size: int, *, pitch: int = 40, radius: int = 10, seed: int = 0) -> np.ndarray:
    """A lattice of bright disks on a speckled background, built from one repeated cell (no per-mark drawing)."""
    yy, xx = np.mgrid[0:pitch, 0:pitch]
    cell = np.where((yy - pitch // 2) ** 2 + (xx - pitch // 2) ** 2 <= radius**2, 200, 90).astype(np.uint8)
    reps = -(-size // pitch)
    image = np.tile(cell, (reps, reps))[:size, :size]
    rng = np.random.default_rng(seed)
    for r0 in range(0, size, 1024):  # noise in row blocks: no full-size int16 temporary
        block = image[r0:r0 + 1024].astype(np.int16)
        block += rng.integers(-12, 13, size=block.shape, dtype=np.int16)
        image[r0:r0 + 1024] = block.clip(0, 255).astype(np.uint8)
    return image


def ensure_dataset(work_dir: Path, size: int) -> Path:
    """The dataset folder of a SIZE x SIZE image, drawn on the first run and reused after, with the
    outputs of earlier runs removed.

    The image is written through :func:`am.files.atomic_output`, so a draw that fails or is
    interrupted leaves no partial image for a later run to reuse, and a temporary file left by a
    killed one is removed before drawing again.
    """
    import tifffile

    from am.files import atomic_output, remove_leftover_temporaries

    dataset = work_dir / f"dataset-{size}"
    image_path = dataset / "source" / "load" / "image.tif"
    if not image_path.is_file():
        remove_leftover_temporaries(image_path.parent)
        image = draw_image(size)
        with atomic_output(image_path) as handle:
            tifffile.imwrite(handle, image, compression="zlib", compressionargs={"level": 1}, tile=(512, 512))
    for derived in ("source_norm", "tiles", "tiles_stitched", "am_coords"):  # a fresh run every time
        subprocess.run(["rm", "-rf", str(dataset / derived)], check=True)
    return dataset


class MemorySampler:
    """Samples the RSS of a process and its children on a thread; keeps the peak per process and in total."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self.peaks: dict[int, float] = {}
        self.total_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0.0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss / MiB
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0.0), rss)
            self.total_peak = max(self.total_peak, total)
            self._stop.wait(SAMPLE_EVERY_S)


def run_load_test(*, size: int, workers: int = 2, tile_size: int = 512, tile_overlap: int = 128,
                  model: Path | None = None, work_dir: Path, timeout_s: float = 7200) -> LoadReport:
    """Run the pipeline once on a SIZE x SIZE image and measure it; see the module docstring.

    Relative paths are taken from the current folder: they are made absolute here, since the
    pipeline runs from the repository root and would read them from there.
    """
    work_dir = work_dir.resolve()
    model = model.resolve() if model is not None else None
    work_dir.mkdir(parents=True, exist_ok=True)
    model_name = str(model) if model else "tiny test U-Net (write_test_checkpoint, untrained)"
    if model is None:
        from am.model.build import write_test_checkpoint

        model = work_dir / "tiny.pt"
        if not model.is_file():
            write_test_checkpoint(model, seed=0)
    dataset = ensure_dataset(work_dir, size)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AM_")}
    env.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(work_dir / "cache")})
    command = [sys.executable, "-m", "am.pipeline", str(dataset), "--no-register", "--no-progress",
               "--workers", str(workers), "--model", str(model), "--tile-size", str(tile_size),
               "--tile-overlap", str(tile_overlap)]
    started = time.monotonic()
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        with MemorySampler(proc.pid) as sampler:
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()
                returncode = proc.wait()
        wall = time.monotonic() - started
        err.seek(0)
        out.seek(0)
        stderr, stdout = err.read().decode(errors="replace"), out.read().decode(errors="replace")

    worker_pids = {int(pid): int(n) for n, pid in re.findall(r"started worker (\d+) \(pid (\d+)\)", stderr)}
    meta_path = dataset / "tiles" / "load" / "meta.json"
    tiles = len(json.loads(meta_path.read_text())["plan"]["tiles"]) if meta_path.is_file() else 0
    segmented = re.search(r"(\d+) tile\(s\) segmented", stdout)
    seconds = _stage_seconds(stdout)
    mask_shape: tuple[int, ...] = ()
    mask_path = dataset / "tiles_stitched" / "load" / "mask.tiff"
    if mask_path.is_file():
        import tifffile

        with tifffile.TiffFile(mask_path) as tif:
            mask_shape = tuple(tif.pages[0].shape)
    return LoadReport(
        size=size, tiles=tiles, segmented=int(segmented.group(1)) if segmented else 0, workers=workers,
        model=model_name, returncode=returncode, wall_s=wall, seconds=seconds,
        orchestrator_peak_mib=sampler.peaks.get(proc.pid, 0.0),
        worker_peak_mib={worker_pids[pid]: mib for pid, mib in sampler.peaks.items() if pid in worker_pids},
        total_peak_mib=sampler.total_peak, mask_shape=mask_shape, stderr_tail=stderr[-3000:],
    )


def _stage_seconds(stdout: str) -> dict[str, float]:
    """Seconds per stage from the pipeline's summary: its time line (without the total) and the overlap line."""
    from am.bench.pipeline import STAGE_TIME, SUMMARY_BUSY, SUMMARY_TIME

    seconds: dict[str, float] = {}
    for line in (SUMMARY_TIME.search(stdout), SUMMARY_BUSY.search(stdout)):
        if line is not None:
            seconds.update((name, float(value)) for name, value in STAGE_TIME.findall(line.group(1)))
    return seconds


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options the run cannot use before anything is drawn: a 20000 px image takes minutes and
    hundreds of MB, and the pipeline would refuse it only after that."""
    from am.cli import output_problem
    from am.imageio import MAX_PIXELS
    from am.prepare import MIN_IMAGE_SIDE_PX
    from am.settings import SettingError, Settings

    largest = math.isqrt(MAX_PIXELS)
    if not MIN_IMAGE_SIDE_PX <= args.size <= largest:
        parser.error(f"--size {args.size}: give an image side from {MIN_IMAGE_SIDE_PX} (the smallest the model "
                     f"takes) to {largest} px (the largest image the pipeline reads)")
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: give at least 1 worker process")
    try:  # the pipeline's own rules for its tiles
        Settings(workers=args.workers, tile_size=args.tile_size, tile_overlap=args.tile_overlap)
    except SettingError as exc:
        parser.error(f"--tile-size {args.tile_size} --tile-overlap {args.tile_overlap}: {exc}")
    if args.model is not None and not args.model.is_file():
        parser.error(f"--model {args.model} is not a file; give a checkpoint, or leave --model out for the tiny "
                     "test model")
    if problem := output_problem(args.work_dir, folder=True):
        parser.error(f"--work-dir: {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20000, help="image side in pixels (default 20000)")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    parser.add_argument("--tile-size", type=int, default=512, help="tile side in px (default 512)")
    parser.add_argument("--tile-overlap", type=int, default=128, help="tile overlap in px (default 128)")
    parser.add_argument("--model", type=Path, help="checkpoint (default: the tiny test model)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "data" / "load-test",
                        help="where the image, the model and the outputs go (default data/load-test)")
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        report = run_load_test(size=args.size, workers=args.workers, tile_size=args.tile_size,
                               tile_overlap=args.tile_overlap, model=args.model, work_dir=args.work_dir)
    except OSError as exc:  # the work dir's disk filled while the image was drawn, say
        from am.cli import describe_os_error

        print(f"load_test: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    print(report.table())
    if not report.ok:
        print(report.stderr_tail, file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
