"""``python -m am.bench``: model-only and worker-loop tiles/s, the per-stage breakdown, the pipeline ratio.

Examples::

    python -m am.bench --checkpoint am/models/default.pt --device cpu --threads 2
    python -m am.bench --encoder resnext50_32x4d --device cuda --precision fp16 --batch-size 128 --compile --json
    python -m am.bench --checkpoint am/models/default.pt --pipeline-image image5000.tif --workers 2

Prints a table, or with ``--json`` one JSON object (keys include ``model_tiles_per_s`` and
``worker_tiles_per_s``). Exit code 0 on success, 1 for an am-segm error, 2 for bad usage.
"""

from __future__ import annotations

# Loaded with the interpreter or the package already, so importing them leaves no time for a Ctrl-C;
# every other import is in the try below.
import logging
import os
import sys

try:
    import argparse
    import json
    import math
    import tempfile
    from contextlib import ExitStack
    from dataclasses import asdict
    from pathlib import Path
    from typing import Any

    from am.bench.loop import INPUT_BUCKET, OUTPUT_BUCKET
    from am.cli import (
        COMPILE_MODES,
        EXIT_OK,
        EXIT_USAGE,
        add_log_level_option,
        add_precision_option,
        configure_logging,
        device_option,
        path_option,
        run_main,
        text_option,
        threads_problem,
    )
    from am.errors import InputError
    from am.messages import MAX_TILES_PER_MESSAGE
    from am.settings import MAX_TILE_SIZE
    from am.startup import NOTHING_DONE, hold_ctrl_c, run_command
    from am.worker.timing import STAGES

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.bench")

log = logging.getLogger("am.bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m am.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", type=path_option, help="checkpoint to measure (default: the shipped model)")
    model.add_argument("--encoder", type=text_option,
                       help="measure an untrained U-Net with this encoder instead, e.g. resnext50_32x4d")
    parser.add_argument("--device", type=device_option, help="cpu, cuda or cuda:N (default: cuda when available)")
    add_precision_option(parser)
    parser.add_argument("--batch-size", type=int, default=0, help="tiles per forward pass (0: 4 on CPU, 64 on CUDA)")
    parser.add_argument("--tiles-per-message", type=int, default=0,
                        help="worker loop: tiles per SQS message and S3 object (0: the pipeline's local default, 8, "
                             "on CPU and its AWS default, 32, on CUDA)")
    parser.add_argument("--tile-size", type=int, default=512,
                        help=f"tile side in pixels, a multiple of 32 up to {MAX_TILE_SIZE} (default 512)")
    parser.add_argument("--tiles", type=int, default=0,
                        help="tiles per measurement (default: 16 batches for the model, 8 for the loop)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads, at most this machine's CPUs (0: torch's default, all cores)")
    parser.add_argument("--compile", choices=COMPILE_MODES, default="off", const="on", nargs="?",
                        help="torch.compile the model (--compile alone means on; auto: CUDA only)")
    parser.add_argument("--compile-budget", type=float, default=None, metavar="S",
                        help="seconds torch.compile may take before the model runs uncompiled (default: the "
                             "workers' own budget); a bench with a deadline of its own keeps it well inside that")
    parser.add_argument("--no-loop", action="store_true", help="skip the worker-loop measurement")
    parser.add_argument("--loop-endpoint", default="embedded",
                        help="S3/SQS for the worker loop: embedded (moto's server in a child process, default), "
                             "aws (real S3 and SQS, boto3's credentials), or an http(s):// endpoint URL")
    parser.add_argument("--loop-buckets", nargs=2, metavar=("IN", "OUT"), default=[INPUT_BUCKET, OUTPUT_BUCKET],
                        help="buckets of the worker loop (created if missing; only the run's prefix is deleted)")
    parser.add_argument("--region", default="us-east-1", help="AWS region of --loop-endpoint aws")
    parser.add_argument("--agreement", type=int, default=0, metavar="N",
                        help="also compare masks with the float32 reference on N synthetic tiles (seed 12345)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for the arithmetic limit (default: known GPUs)")
    parser.add_argument("--pipeline-image", type=path_option,
                        help="also run am.pipeline on this image (.tif, .tiff or .png) for the overhead ratio; "
                             "checked before anything is measured")
    parser.add_argument("--workers", type=int, default=2, help="pipeline workers (default 2)")
    parser.add_argument("--pipeline-arg", action="append", default=[],
                        help="extra am.pipeline argument (repeatable; default --no-register); the pipeline gets "
                             "the measured tile size, batch size, precision and compilation, and --tta off")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_log_level_option(parser, default="WARNING")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure the options ask for, as one flat dict (the ``--json`` output)."""
    import numpy as np

    from am.bench.model import device_name, synthetic_tiles
    from am.model.build import write_untrained_checkpoint
    from am.model.checkpoint import default_model_path
    from am.model.predict import Predictor
    from am.worker.worker import OPENCV_THREADS, opencv_threads_of_a_worker

    with tempfile.TemporaryDirectory(prefix="am-bench-") as tmp, opencv_threads_of_a_worker():
        checkpoint = args.checkpoint or default_model_path()
        if args.encoder:
            checkpoint = write_untrained_checkpoint(Path(tmp) / f"{args.encoder}.pt", encoder=args.encoder,
                                                    tile_size=args.tile_size)
        # Compiled for the tiles measured: a compiled model runs only the shape it was compiled for.
        budget = {} if args.compile_budget is None else {"compile_budget_s": args.compile_budget}
        predictor = Predictor.from_checkpoint(checkpoint, device=args.device, threads=args.threads,
                                              batch_size=args.batch_size, precision=args.precision,
                                              compile=args.compile, tile_size=args.tile_size, **budget)
        batch = predictor.batch_size
        out: dict[str, Any] = {
            "checkpoint": str(args.checkpoint or "") if not args.encoder else "",
            "encoder": predictor.meta.encoder, "trained": predictor.meta.trained, "device": predictor.device,
            "device_name": device_name(predictor.device), "precision": predictor.precision, "batch_size": batch,
            "tile_size": args.tile_size, "compiled": predictor.runs_compiled(args.tile_size),
            "compile_s": round(predictor.compile_s, 2),
            "cpu_count": os.cpu_count(), "opencv_threads": OPENCV_THREADS, "load_average": list(os.getloadavg()),
        }
        images = synthetic_tiles(min(batch, 8), size=args.tile_size)
        full = np.stack([images[i % len(images)] for i in range(batch)])
        result = _model_figures(args, predictor, full, out)
        if not args.no_loop:
            _loop_figures(args, predictor, images, result, out)
        if args.agreement:
            reference = Predictor.from_checkpoint(checkpoint, device=predictor.device, threads=args.threads,
                                                  batch_size=batch, precision="fp32", compile="off")
            _agreement_figures(args, predictor, reference, out)
        if args.pipeline_image:
            _pipeline_figures(args, predictor, full, result, Path(checkpoint), Path(tmp), out)
        return out


def _model_figures(args: argparse.Namespace, predictor: Any, full: Any, out: dict[str, Any]) -> Any:
    """The model alone on full batches, against the device's peak where it is known; the measurement."""
    from am.bench.model import gflop_per_tile, model_throughput, peak_tflops

    batch = predictor.batch_size
    model_tiles = args.tiles or 16 * batch
    result = model_throughput(predictor, tiles=full, iterations=max(1, -(-model_tiles // batch)))
    gflop = gflop_per_tile(predictor.meta, tile_size=args.tile_size)
    peak = args.peak_tflops or peak_tflops(out["device_name"], predictor.precision)
    out.update({
        "model_tiles": result.tiles,
        "model_tiles_per_s": round(result.model_tiles_per_s, 2),
        "predict_tiles_per_s": round(result.predict_tiles_per_s, 2),
        "predict_ms_per_tile": {k: round(v / result.tiles * 1000, 3) for k, v in asdict(result.times).items()
                                if k != "tiles"},
        "gflop_per_tile": round(gflop, 2),
        "achieved_tflops": round(gflop * result.model_tiles_per_s / 1000, 2),
        "peak_tflops": peak,
        "limit_tiles_per_s": round(peak * 1000 / gflop, 0) if peak else None,
    })
    if peak:
        out["model_fraction_of_limit"] = round(result.model_tiles_per_s / out["limit_tiles_per_s"], 3)
    return result


def _loop_figures(args: argparse.Namespace, predictor: Any, images: Any, result: Any, out: dict[str, Any]) -> None:
    """The worker's whole loop (queue, storage, model, masks) on the chosen endpoint, per tile and per stage."""
    from am.bench.loop import endpoint_process, loop_throughput
    from am.job import TILES_PER_MESSAGE_AWS, TILES_PER_MESSAGE_LOCAL

    loop_tiles = args.tiles or 8 * predictor.batch_size
    with ExitStack() as stack:
        url = {"embedded": "", "aws": ""}.get(args.loop_endpoint, args.loop_endpoint)
        if args.loop_endpoint == "embedded":
            url = stack.enter_context(endpoint_process())
        # As the pipeline would send them: the local default on CPU, the AWS (GPU) default on CUDA.
        per_message = args.tiles_per_message or (
            TILES_PER_MESSAGE_AWS if predictor.device.startswith("cuda") else TILES_PER_MESSAGE_LOCAL)
        loop = loop_throughput(predictor, images=images, count=loop_tiles, endpoint_url=url,
                               batch_size=predictor.batch_size, tiles_per_message=per_message,
                               input_bucket=args.loop_buckets[0],
                               output_bucket=args.loop_buckets[1], region=args.region)
    out["loop_endpoint"] = args.loop_endpoint
    out["tiles_per_message"] = per_message
    out.update({
        "worker_tiles": loop.done,
        "worker_tiles_per_s": round(loop.worker_tiles_per_s, 2),
        "worker_fraction_of_model": round(loop.worker_tiles_per_s / result.model_tiles_per_s, 3),
        "worker_ms_per_tile": {stage: round(loop.per_tile.get(stage, 0.0) * 1000, 3) for stage in STAGES},
    })
    if out.get("peak_tflops"):
        out["worker_fraction_of_limit"] = round(loop.worker_tiles_per_s / out["limit_tiles_per_s"], 3)


def _agreement_figures(args: argparse.Namespace, predictor: Any, reference: Any, out: dict[str, Any]) -> None:
    """How many mask pixels the measured precision and compilation share with plain fp32."""
    from am.bench.model import mask_agreement, synthetic_tiles

    out["mask_agreement"] = round(mask_agreement(predictor, reference,
                                                 synthetic_tiles(args.agreement, size=args.tile_size)), 6)
    out["agreement_tiles"] = args.agreement


def _pipeline_figures(args: argparse.Namespace, predictor: Any, full: Any, result: Any, checkpoint: Path,
                      workdir: Path, out: dict[str, Any]) -> None:
    """The whole pipeline on one image, against what its workers' models alone could do."""
    from am.bench.pipeline import Workload, pipeline_overhead

    capacity, basis = _model_capacity(predictor, full, workers=args.workers, measured=result)
    # The rate was measured on this workload: the pipeline's workers run the same one.
    # A worker compiles for its checkpoint's tile size (it learns a job's tiles only from their messages), so
    # tiles of another size run uncompiled in the pipeline whatever AM_COMPILE says: the comparison says so.
    workers_compile = predictor.meta.tile_size == args.tile_size
    if predictor.runs_compiled(args.tile_size) and not workers_compile:
        log.warning("the pipeline's workers compile for the checkpoint's %d px tiles, so its %d px tiles run "
                    "uncompiled there while the model rate was measured compiled: the overhead includes that "
                    "difference; give --tile-size %d to compare like with like", predictor.meta.tile_size,
                    args.tile_size, predictor.meta.tile_size)
    workload = Workload(tile_size=args.tile_size, batch_size=predictor.batch_size, precision=predictor.precision,
                        compiled=predictor.runs_compiled(args.tile_size) and workers_compile, device=predictor.device)
    pipe = pipeline_overhead(args.pipeline_image, checkpoint=checkpoint, workers=args.workers,
                             model_tiles_per_s=capacity, workload=workload, workdir=workdir,
                             extra_args=args.pipeline_arg or ["--no-register"])
    out["pipeline"] = {
        "image": str(args.pipeline_image), "workers": pipe.workers, "tiles": pipe.tiles,
        "model_capacity_tiles_per_s": round(capacity, 2), "model_capacity_basis": basis,
        "wall_s": round(pipe.wall_s, 2), "model_s": round(pipe.model_s, 2),
        "overhead_ratio": round(pipe.overhead_ratio, 3),
        "compute_summed_s": round(pipe.compute_summed_s, 2), "compute_ratio": round(pipe.compute_ratio, 3),
        "summed_compute_ratio": round(pipe.summed_compute_ratio, 3),
        "stages_s": pipe.stages,
    }


def _model_capacity(predictor: Any, batch: Any, *, workers: int, measured: Any) -> tuple[float, str]:
    """Tiles/s the model alone achieves on this machine the way the pipeline's workers run it.

    On CUDA the workers share the device: its model-only rate. On CPU each of ``workers`` local
    workers gets ``cores // workers`` intra-op threads (as the local backend sets AM_THREADS), so
    the capacity is ``workers`` times the model-only rate measured with that many threads.
    """
    import torch

    from am.bench.model import model_throughput

    if predictor.device.startswith("cuda"):
        return measured.model_tiles_per_s, "model-only tiles/s of the device"
    threads = max(1, (os.cpu_count() or 1) // workers)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rate = model_throughput(predictor, tiles=batch, iterations=max(4, measured.tiles // len(batch) // 2))
    finally:
        torch.set_num_threads(before)
    return workers * rate.model_tiles_per_s, (f"{workers} workers x model-only tiles/s with {threads} thread(s) "
                                             f"({rate.model_tiles_per_s:.2f})")


def table(out: dict[str, Any]) -> str:
    """The human-readable form of :func:`run`'s result."""
    lines = [
        f"model      {out['encoder']} ({'trained' if out['trained'] else 'untrained'}) on {out['device']} "
        f"[{out['device_name']}], {out['precision']}, batch {out['batch_size']}, {out['tile_size']} px, "
        f"compiled {'yes' if out['compiled'] else 'no'}" + (f" ({out['compile_s']} s)" if out["compiled"] else ""),
        f"load       {out['load_average'][0]:.2f} (1-min load average, {out['cpu_count']} cores)",
        f"model-only {out['model_tiles_per_s']:.1f} tiles/s (normalise + forward + threshold); "
        f"predict() {out['predict_tiles_per_s']:.1f} tiles/s with H2D and D2H",
        f"arithmetic {out['gflop_per_tile']} GFLOP/tile, {out['achieved_tflops']} TFLOP/s achieved"
        + (f", limit {out['limit_tiles_per_s']:.0f} tiles/s at {out['peak_tflops']} TFLOP/s "
           f"(model at {out['model_fraction_of_limit']:.1%})" if out.get("peak_tflops") else ""),
    ]
    if "worker_tiles_per_s" in out:
        lines.append(f"worker     {out['worker_tiles_per_s']:.1f} tiles/s over {out['worker_tiles']} tiles "
                     f"({out['worker_fraction_of_model']:.1%} of model-only), S3/SQS: {out['loop_endpoint']}")
        lines.append("breakdown  busy ms per tile (stages overlap): " + ", ".join(
            f"{stage} {ms:.2f}" for stage, ms in out["worker_ms_per_tile"].items()))
    if "mask_agreement" in out:
        lines.append(f"masks      {out['mask_agreement']:.4%} of pixels equal to the float32 reference "
                     f"({out['agreement_tiles']} synthetic tiles)")
    if "pipeline" in out:
        p = out["pipeline"]
        lines.append(f"pipeline   {p['tiles']} tiles, {p['workers']} workers: wall {p['wall_s']:.1f} s, model time "
                     f"{p['model_s']:.1f} s -> overhead ratio {p['overhead_ratio']:.2f}")
        lines.append(f"           model compute summed over workers {p['compute_summed_s']:.1f} s: wall / summed "
                     f"compute {p['summed_compute_ratio']:.2f}, wall / per-worker compute {p['compute_ratio']:.2f}")
        lines.append(f"           model time = tiles / {p['model_capacity_tiles_per_s']:.2f} tiles/s = "
                     f"{p['model_capacity_basis']}")
        lines.append("           stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in p["stages_s"].items()))
    return "\n".join(lines)


def check_pipeline_image(path: Path) -> None:
    """InputError naming ``--pipeline-image`` and the user's file when am.pipeline could not read it: the
    pipeline runs last, on a copy in a temporary dataset, so its own error would come after every
    measurement and name the copy. Its header and completeness are checked as am.pipeline checks its
    inputs before any worker starts."""
    from am.imageio import check_complete, read_header

    try:
        read_header(path)
        check_complete(path)
    except InputError as exc:
        raise InputError(f"--pipeline-image {path}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 0 or args.tiles < 0 or args.threads < 0 or args.workers < 1 or args.agreement < 0:
        parser.print_usage(sys.stderr)
        print("am.bench: --batch-size, --tiles, --threads and --agreement must be >= 0, --workers >= 1",
              file=sys.stderr)
        return EXIT_USAGE
    if problem := threads_problem(args.threads):
        parser.print_usage(sys.stderr)
        print(f"am.bench: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.peak_tflops is not None and not (math.isfinite(args.peak_tflops) and args.peak_tflops > 0):
        parser.print_usage(sys.stderr)
        print(f"am.bench: --peak-tflops {args.peak_tflops} must be a finite number > 0 (the device's peak "
              "TFLOP/s; leave it out for a known GPU's)", file=sys.stderr)
        return EXIT_USAGE
    if args.compile_budget is not None and not (math.isfinite(args.compile_budget) and args.compile_budget > 0):
        parser.print_usage(sys.stderr)
        print(f"am.bench: --compile-budget {args.compile_budget} must be a finite number of seconds > 0",
              file=sys.stderr)
        return EXIT_USAGE
    if not 0 <= args.tiles_per_message <= MAX_TILES_PER_MESSAGE:
        parser.print_usage(sys.stderr)
        print(f"am.bench: --tiles-per-message must be between 0 and {MAX_TILES_PER_MESSAGE}", file=sys.stderr)
        return EXIT_USAGE
    if args.tile_size < 32 or args.tile_size % 32:
        parser.print_usage(sys.stderr)
        print(f"am.bench: --tile-size {args.tile_size} must be a positive multiple of 32 (at least 32)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.tile_size > MAX_TILE_SIZE:
        # The pipeline's own limit (setting tile_size): a batch of larger tiles would end in a MemoryError.
        parser.print_usage(sys.stderr)
        print(f"am.bench: --tile-size {args.tile_size} is above {MAX_TILE_SIZE}, the largest tile the pipeline "
              f"runs (setting tile_size); give {MAX_TILE_SIZE} or less", file=sys.stderr)
        return EXIT_USAGE
    from am.bench.pipeline import workload_option_in

    if clash := workload_option_in(args.pipeline_arg):
        parser.print_usage(sys.stderr)
        print(f"am.bench: --pipeline-arg {clash} would run the pipeline on another workload than the one "
              "measured; give --tile-size and --batch-size to am.bench itself (the pipeline runs with --tta off)",
              file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level)
    from am.bench.model import check_device

    check_device(args.device)
    if args.pipeline_image is not None:
        check_pipeline_image(args.pipeline_image)  # before minutes of measuring the model
    out = run(args)
    print(json.dumps(out, sort_keys=True) if args.json else table(out))
    return EXIT_OK


if __name__ == "__main__":
    run_command(lambda: run_main(main, name="am.bench"), "am.bench", NOTHING_DONE)
