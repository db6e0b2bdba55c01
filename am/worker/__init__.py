"""Worker stage: ``python -m am.worker`` takes tile messages off SQS and writes masks to S3.

The pieces, each replaceable in tests by a fake behind the same interface::

    worker = Worker(Queue(sqs, url), Storage(s3), ModelCache(load, storage=storage, cache_dir=tmp),
                    input_bucket="in", output_bucket="out", results=partial(Queue, sqs),
                    batch_size=4, idle_exit_s=60, visibility_timeout_s=120, worker_id="w1")
    sys.exit(worker.run())
"""

from am.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from am.worker.batch import TileSteps, TileWork
    from am.worker.config import WorkerConfig
    from am.worker.lease import Heartbeat, Lease
    from am.worker.models import ModelCache, Predictor
    from am.worker.stages import Prefetcher, Uploader
    from am.worker.timing import STAGES, StageClock
    from am.worker.worker import ResultSender, Worker, WorkerStats

# Each name loads with its module on first use, not with the package: see am.lazy.
_EXPORTS = {
    "TileSteps": "am.worker.batch",
    "TileWork": "am.worker.batch",
    "WorkerConfig": "am.worker.config",
    "Heartbeat": "am.worker.lease",
    "Lease": "am.worker.lease",
    "ModelCache": "am.worker.models",
    "Predictor": "am.worker.models",
    "Prefetcher": "am.worker.stages",
    "Uploader": "am.worker.stages",
    "STAGES": "am.worker.timing",
    "StageClock": "am.worker.timing",
    "ResultSender": "am.worker.worker",
    "Worker": "am.worker.worker",
    "WorkerStats": "am.worker.worker",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "STAGES",
    "Heartbeat",
    "Lease",
    "ModelCache",
    "Predictor",
    "Prefetcher",
    "ResultSender",
    "StageClock",
    "TileSteps",
    "TileWork",
    "Uploader",
    "Worker",
    "WorkerConfig",
    "WorkerStats",
]
