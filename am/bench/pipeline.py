"""The pipeline-level figure: wall time of ``python -m am.pipeline`` on one image against its model time.

The overhead ratio is ``wall / model``, where

- ``wall`` is the wall-clock time of the whole command (interpreter start to exit: setup,
  prepare+segment, clean-up, stitch, register if asked, overlay), in a fresh dataset holding only
  the image;
- ``model`` is the time the model alone needs for the job's tiles on this machine, run the way
  the workers run it: ``tiles / model_tiles_per_s``, where the caller measures the model-only
  rate (same checkpoint, device and batch size); ``python -m am.bench`` passes, on CPU,
  ``workers`` times the rate with ``cores // workers`` threads, and on CUDA the device's rate.

That rate is of one workload: tiles of one size, batches of one size, one precision, compiled or
not, without test-time augmentation, on one device. The pipeline is run on that same workload
(:class:`Workload`: ``--tile-size``, ``--batch-size``, ``--tta off`` and the workers' AM_PRECISION,
AM_COMPILE and AM_POSTPROCESS); its own defaults, a config file or the caller's environment would
otherwise set a tile size, batch or arithmetic other than the measured one.

The workers' own account, model compute summed over workers (``compute_s`` of their reports), is
reported beside it, as ``wall / summed compute`` and ``wall / (summed compute / workers)``.
The stages come from the pipeline's summary: the phases of its ``time:`` line (one after
another) and, from its ``within prepare+segment:`` line, the busy seconds of the stages that
overlap there (``prepare busy``, ``upload busy``, ``collect busy``) and the ``tail``::

    workload = Workload(tile_size=512, batch_size=4, precision="fp32", compiled=False, device="cpu")
    result = pipeline_overhead(Path("image.tif"), checkpoint=path, workers=2, model_tiles_per_s=7.5,
                               workload=workload, workdir=tmp)
    result.overhead_ratio
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from am.errors import InputError, JobFailed
from am.settings import Settings

log = logging.getLogger(__name__)

SUMMARY_JOB = re.compile(r"job \S+: (\d+) tile\(s\) segmented, model compute ([\d.]+) s summed over workers")
SUMMARY_TIME = re.compile(r"^time: (.*), total ([\d.]+) s$", re.MULTILINE)
SUMMARY_BUSY = re.compile(r"^within prepare\+segment: (.*)$", re.MULTILINE)
# A stage name: word characters, "+" and "-" (prepare+segment, clean-up), optionally followed by " busy".
STAGE_TIME = re.compile(r"([\w+-]+(?: busy)?) ([\d.]+) s")
OUTPUT_TAIL_CHARS = 3000
# am.pipeline options the workload sets; given again through extra_args they would measure another one.
WORKLOAD_OPTIONS = ("--tile-size", "--tile-overlap", "--batch-size", "--tta")


@dataclass(frozen=True)
class Workload:
    """What the model rate was measured on, as resolved (no "auto", no 0): the pipeline runs the same.

    ``device`` "cpu" hides CUDA from the pipeline's workers, which would otherwise pick a GPU.
    """

    tile_size: int
    batch_size: int
    precision: str
    compiled: bool
    device: str

    def arguments(self) -> list[str]:
        """am.pipeline options; the overlap is the pipeline's default where the tile allows it."""
        overlap = min(Settings.tile_overlap, self.tile_size // 2)
        return ["--tile-size", str(self.tile_size), "--tile-overlap", str(overlap),
                "--batch-size", str(self.batch_size), "--tta", "off"]

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with the workers' model variables set (local workers inherit the orchestrator's environment)."""
        env = dict(base)
        env.update({"AM_PRECISION": self.precision, "AM_COMPILE": "on" if self.compiled else "off",
                    "AM_POSTPROCESS": "on"})
        if self.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env


@dataclass(frozen=True)
class PipelineResult:
    tiles: int
    workers: int
    wall_s: float
    compute_summed_s: float
    model_s: float
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def overhead_ratio(self) -> float:
        """Pipeline wall time over the model time of its tiles (1.0 = nothing but the model)."""
        return self.wall_s / self.model_s if self.model_s else 0.0

    @property
    def summed_compute_ratio(self) -> float:
        """Wall time over model compute summed over workers (parallel workers push it below 1)."""
        return self.wall_s / self.compute_summed_s if self.compute_summed_s else 0.0

    @property
    def compute_ratio(self) -> float:
        """Wall time over the workers' own compute time per worker (how busy each worker's model was)."""
        per_worker = self.compute_summed_s / self.workers if self.workers else 0.0
        return self.wall_s / per_worker if per_worker else 0.0


def parse_summary(stdout: str) -> tuple[int, float, dict[str, float]]:
    """(tiles segmented, model compute summed over workers, seconds per stage) from the pipeline's summary.

    The stages are the phases of the time line, its total, then the overlapping figures of the
    ``within prepare+segment`` line when there is one.
    """
    job = SUMMARY_JOB.search(stdout)
    timing = SUMMARY_TIME.search(stdout)
    if job is None or timing is None:
        raise JobFailed(f"the pipeline's summary lacks the job or time line; its output ends with:\n"
                        f"{stdout[-OUTPUT_TAIL_CHARS:]}")
    stages = {name: float(seconds) for name, seconds in STAGE_TIME.findall(timing.group(1))}
    stages["total"] = float(timing.group(2))
    busy = SUMMARY_BUSY.search(stdout)
    if busy is not None:
        stages.update((name, float(seconds)) for name, seconds in STAGE_TIME.findall(busy.group(1)))
    return int(job.group(1)), float(job.group(2)), stages


def pipeline_overhead(
    image: Path,
    *,
    checkpoint: Path,
    workers: int,
    model_tiles_per_s: float,
    workload: Workload,
    workdir: Path,
    extra_args: Sequence[str] = ("--no-register",),
    environ: Mapping[str, str] | None = None,
) -> PipelineResult:
    """Run the pipeline once on a fresh dataset holding ``image`` and compare its wall time with the model's.

    ``model_tiles_per_s`` was measured on ``workload``, which the pipeline is given too.
    """
    image = Path(image)
    if not image.is_file():
        raise InputError(f"pipeline image {image} does not exist; give a .tif, .tiff or .png file")
    if model_tiles_per_s <= 0:
        raise InputError(f"model tiles/s must be > 0 to compute the overhead ratio, got {model_tiles_per_s}")
    if clash := workload_option_in(extra_args):
        raise InputError(f"pipeline argument {clash} would run another workload than the one measured; "
                         "leave it out (the bench passes its own --tile-size and --batch-size, and --tta off)")
    dataset = Path(workdir) / "pipeline-dataset"
    shutil.rmtree(dataset, ignore_errors=True)
    (dataset / "source" / "bench").mkdir(parents=True)
    os.symlink(image.resolve(), dataset / "source" / "bench" / image.name)
    command = [sys.executable, "-m", "am.pipeline", str(dataset), "--workers", str(workers), "--model",
               str(checkpoint), "--no-progress", *workload.arguments(), *extra_args]
    env = workload.environment(os.environ if environ is None else environ)
    log.info("running %s with AM_PRECISION=%s AM_COMPILE=%s", " ".join(command), env["AM_PRECISION"],
             env["AM_COMPILE"])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise JobFailed(f"python -m am.pipeline exited with {done.returncode}; its log ends with:\n"
                        f"{done.stderr[-OUTPUT_TAIL_CHARS:]}")
    tiles, compute, stages = parse_summary(done.stdout)
    return PipelineResult(tiles=tiles, workers=workers, wall_s=wall, compute_summed_s=compute,
                          model_s=tiles / model_tiles_per_s, stages=stages)


def workload_option_in(args: Sequence[str]) -> str | None:
    """The first of ``args`` that sets an option of :data:`WORKLOAD_OPTIONS` (``--tta d4`` or ``--tta=d4``), or None.

    Shortened too (``--batch 8``, ``--tile-s=256``): am.pipeline's parser takes any unambiguous
    beginning of an option's name, and a given again after the workload's own would win.
    """
    for arg in args:
        name = arg.split("=", 1)[0]
        if len(name) > 2 and name.startswith("--") and any(option.startswith(name) for option in WORKLOAD_OPTIONS):
            return arg
    return None


__all__ = ["PipelineResult", "Workload", "parse_summary", "pipeline_overhead", "workload_option_in"]
