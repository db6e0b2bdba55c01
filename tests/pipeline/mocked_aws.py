"""moto's buckets and tile queues as a deployment has them, for tests that run a job in this process
with workers of their own (threads, or stand-ins that only stop or signal)."""

from __future__ import annotations

from am.backends import Backend
from am.launchers import Launcher
from am.settings import Settings
from am.transport.clients import ClientFactory
from am.transport.queue import ensure_tile_queues
from am.transport.storage import Storage


def deploy(clients: ClientFactory, settings: Settings, *, threads: int = 2) -> tuple[str, str]:
    """Make the settings' tile and mask buckets and tile queues; returns the queue's and dead-letter queue's URLs."""
    storage = Storage(clients.s3(), threads=threads)
    for bucket in (settings.input_bucket, settings.output_bucket):
        storage.ensure_bucket(bucket)
    return ensure_tile_queues(clients.sqs(), name=settings.queue_name,
                              dead_letter_name=settings.dead_letter_queue_name,
                              visibility_timeout_s=30, max_receive_count=3)


def mocked_backend(clients: ClientFactory, launcher: Launcher, *, name: str = "local") -> Backend:
    """A backend of the default settings on moto, whose workers ``launcher`` starts."""
    settings = Settings()
    queue_url, dlq_url = deploy(clients, settings)
    return Backend(name, clients, launcher, queue_url, dlq_url, settings.input_bucket, settings.output_bucket, "m")
