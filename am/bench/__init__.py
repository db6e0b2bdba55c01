"""Throughput benchmark: ``python -m am.bench`` measures the model, the worker loop and the pipeline.

Three figures, each for one checkpoint (or an untrained encoder), device, precision and batch size:

- model-only tiles/s (:mod:`am.bench.model`): normalise, forward pass and threshold, device time;
- worker-loop tiles/s (:mod:`am.bench.loop`): the real worker against the embedded S3/SQS
  endpoint, with the busy time per tile of each stage (receive, download, decode, H2D, compute,
  D2H, encode, upload, report, delete);
- the pipeline overhead ratio (:mod:`am.bench.pipeline`): wall time of ``am.pipeline`` on an
  image over the model time of its tiles.
"""

from am.bench.loop import LoopResult, endpoint_process, loop_throughput
from am.bench.model import ModelResult, gflop_per_tile, mask_agreement, model_throughput
from am.bench.pipeline import PipelineResult, parse_summary, pipeline_overhead

__all__ = [
    "LoopResult",
    "ModelResult",
    "PipelineResult",
    "endpoint_process",
    "gflop_per_tile",
    "loop_throughput",
    "mask_agreement",
    "model_throughput",
    "parse_summary",
    "pipeline_overhead",
]
