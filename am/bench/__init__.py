"""Throughput benchmark: ``python -m am.bench`` measures the model, the worker loop and the pipeline.

Three figures, each for one checkpoint (or an untrained encoder), device, precision and batch size:

- model-only tiles/s (:mod:`am.bench.model`): normalise, forward pass and threshold, device time;
- worker-loop tiles/s (:mod:`am.bench.loop`): the real worker against the embedded S3/SQS
  endpoint, with the busy time per tile of each stage (receive, download, decode, H2D, compute,
  D2H, encode, upload, report, delete);
- the pipeline overhead ratio (:mod:`am.bench.pipeline`): wall time of ``am.pipeline`` on an
  image over the model time of its tiles.
"""

from am.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from am.bench.loop import LoopResult, endpoint_process, loop_throughput
    from am.bench.model import ModelResult, gflop_per_tile, mask_agreement, model_throughput
    from am.bench.pipeline import PipelineResult, parse_summary, pipeline_overhead

# Each name loads with its module on first use, not with the package: see am.lazy.
_EXPORTS = {
    "LoopResult": "am.bench.loop",
    "endpoint_process": "am.bench.loop",
    "loop_throughput": "am.bench.loop",
    "ModelResult": "am.bench.model",
    "gflop_per_tile": "am.bench.model",
    "mask_agreement": "am.bench.model",
    "model_throughput": "am.bench.model",
    "PipelineResult": "am.bench.pipeline",
    "parse_summary": "am.bench.pipeline",
    "pipeline_overhead": "am.bench.pipeline",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
