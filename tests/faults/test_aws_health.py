"""Fault 2 on the aws backend: no running task while tiles are pending ends the job with a clear error.

ECS is moto's (in this process); the workers' tasks are started by the real EcsLauncher and then
stopped, as a crash or a scale-in would, while the orchestrator waits for tiles.
"""

from __future__ import annotations

import time

import pytest

import am.job
from am.backends import Backend
from am.collector import ResultCollector
from am.dataset import DatasetLayout
from am.errors import LauncherError
from am.job import _wait_for_tiles
from am.launchers.aws import EcsLauncher
from am.messages import tile_name
from am.tracking import JobTracker
from am.transport.queue import Queue, create_results_queue
from am.transport.storage import Storage
from tests.aws.conftest import aws, client, cluster_resources  # noqa: F401  (fixtures: moto ECS with GPU hosts)

JOB = "20261124-130000-0aa0bb"


def test_no_running_task_while_tiles_are_pending_fails_within_bounded_time(aws, cluster_resources,  # noqa: F811
                                                                          monkeypatch, tmp_path):
    monkeypatch.setattr(am.job, "HEALTH_CHECK_EVERY_S", 0.5)
    monkeypatch.setattr(am.job, "RESULT_WAIT_S", 0)
    ecs, sqs = aws.ecs(), aws.sqs()
    launcher = EcsLauncher(ecs, cluster_resources, mode="run_task", max_tasks=10)
    launcher.start(2, {"AM_QUEUE_URL": cluster_resources.queue_url})
    assert launcher.alive() == 2
    backend = Backend("aws", aws, launcher, cluster_resources.queue_url, cluster_resources.dead_letter_queue_url,
                      cluster_resources.input_bucket, cluster_resources.output_bucket, "s3://models/m.pt")
    tracker = JobTracker([tile_name("g", n) for n in range(3)], max_attempts=3)
    collector = ResultCollector(job_id=JOB, tracker=tracker, storage=Storage(aws.s3()),
                           bucket=cluster_resources.output_bucket, layout=DatasetLayout(tmp_path),
                           tile_size=128, on_done=lambda n: None)
    results = Queue(sqs, create_results_queue(sqs, prefix="am-segm-results", job=JOB))

    for arn in launcher.task_arns:  # both tasks die: a crash, a Spot reclaim, a scale-in
        client("ecs").stop_task(cluster=cluster_resources.cluster, task=arn, reason="host terminated")
    started = time.monotonic()
    with pytest.raises(LauncherError, match=r"all workers stopped while 3 tile\(s\) were pending; finished "
                                            r"tiles are kept, rerun the same command to resume"):
        _wait_for_tiles(backend, collector, results=results,
                        dead_letters=Queue(sqs, cluster_resources.dead_letter_queue_url),
                        deadline=time.monotonic() + 20)  # without the check: JobTimeout, not this
    assert time.monotonic() - started < 10
