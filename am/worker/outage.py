"""The worker's patience with an S3 outage: a transfer retried past the retry policy, its work still held.

The retry policy of :mod:`am.transport.retry` gives up on a call after about 22 s; an outage is often
longer (a prefix throttled for minutes, a network coming back). Charging it to the work would spend a
message's few receives per round and dead-letter tiles that nothing is wrong with, and failing a worker's
start-up model download on it would stop every worker of a fleet started during a blip. So a transfer
that failed only because S3 throttled or could not be reached is tried again, for up to ``outage_s``
(``AM_OUTAGE_PATIENCE_S``), and then :class:`StorageOutage` stops the worker. Every other error (a
missing key, a refusal, an untrusted endpoint) is raised at once. Tile transfers and model downloads
share this one loop::

    data = patiently("download of s3://in/j1/g/0001.png", lambda: storage.get_bytes("in", key),
                     outage_s=300.0, wait=abandoned.wait)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from am.errors import TransportError
from am.transport.retry import gave_up_waiting

log = logging.getLogger(__name__)

T = TypeVar("T")

# Pause between two rounds of the retry policy during an outage (each round already waits up to 22 s).
OUTAGE_PAUSE_S = 2.0


class StorageOutage(TransportError):
    """S3 stayed throttled or unreachable for a transfer beyond the worker's patience.

    No tile's fault: raised like a missing bucket, it stops the worker with every held message
    given back, instead of failing tile after tile until the queue sits in the dead-letter queue.
    """


class TransferAbandoned(StorageOutage):
    """A transfer retried through an outage was dropped because the worker had already let its work go."""


def never_abandoned(timeout_s: float) -> bool:
    """A ``wait`` for callers that never let their work go: sleeps and says no."""
    time.sleep(timeout_s)
    return False


def patiently(what: str, transfer: Callable[[], T], *, outage_s: float,
              wait: Callable[[float], bool] = never_abandoned) -> T:
    """Run ``transfer``, again while it fails only because S3 throttles or cannot be reached.

    ``what`` names the transfer in logs and errors. After ``outage_s`` seconds of such failures
    :class:`StorageOutage` is raised. ``wait(seconds)`` pauses between rounds and returns True once
    the caller has let the work go (``threading.Event.wait`` of such a flag): the transfer then ends
    with :class:`TransferAbandoned` instead of keeping a thread busy for work given away.
    """
    started = time.monotonic()
    while True:
        try:
            return transfer()
        except TransportError as exc:
            if not gave_up_waiting(exc):
                raise
            waited = time.monotonic() - started
            if waited >= outage_s:
                raise StorageOutage(f"{what} still failing after {waited:.0f} s of retries (S3 throttling or "
                                    f"unreachable; AM_OUTAGE_PATIENCE_S is {outage_s:.0f} s): {exc}") from exc
            log.warning("%s: S3 unavailable for %.0f s, retrying for up to %.0f s with the work held: %s",
                        what, waited, outage_s, exc)
            if wait(min(OUTAGE_PAUSE_S, outage_s - waited)):
                raise TransferAbandoned(f"{what} abandoned after {waited:.0f} s of retries, the worker having "
                                        f"let its work go: {exc}") from exc


__all__ = ["OUTAGE_PAUSE_S", "StorageOutage", "TransferAbandoned", "never_abandoned", "patiently"]
