"""Transport stage: S3 objects and SQS messages, the only way parts of am-segm talk to each other.

Every AWS call goes through one retry policy (:mod:`am.transport.retry`) and every client
comes from one factory that knows the endpoint (:mod:`am.transport.clients`)::

    clients = ClientFactory(endpoint_url="http://127.0.0.1:5000")
    storage = Storage(clients.s3())
    queue = Queue(clients.sqs(), queue_url)
"""

from am.transport.clients import ClientFactory
from am.transport.queue import Queue, Received, create_results_queue, delete_queue, ensure_tile_queues
from am.transport.retry import RetryPolicy
from am.transport.storage import Storage, parse_s3_uri

__all__ = [
    "ClientFactory",
    "Queue",
    "Received",
    "RetryPolicy",
    "Storage",
    "create_results_queue",
    "delete_queue",
    "ensure_tile_queues",
    "parse_s3_uri",
]
