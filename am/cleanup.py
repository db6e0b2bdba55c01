"""How a job ends: the clean-up steps, and the signals that must not cut them short.

A job leaves a results queue, S3 objects and perhaps dead letters behind unless its clean-up
runs to the end; on AWS nothing else ever removes them. So the steps run in a fixed order, each
even after another fails, what each leaves behind is known until it succeeds, and Ctrl-C during
them is held off until the user insists.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import FrameType

from am.backends import Backend
from am.errors import AmError
from am.launchers.local import STOP_TIMEOUT_S
from am.settings import Settings
from am.transport.queue import Queue, delete_queue
from am.transport.retry import DEFAULT_POLICY, RetryPolicy
from am.transport.storage import Storage

log = logging.getLogger(__name__)

# Clean-up after a failure: a couple of quick tries, so a dead endpoint does not hold up the error.
CLEANUP_RETRY_AFTER_FAILURE = RetryPolicy(attempts=2, base_s=0.2, max_wait_s=1.0)
# About how long a clean-up takes at most, for the message shown when Ctrl-C comes during it: local
# workers get the launcher's stop timeout to finish their batch (``am.job`` adds the final collection
# after an interrupt); ECS tasks get their stop timeout (the launcher waits up to 150 s for them).
CLEANUP_HINT_S = STOP_TIMEOUT_S
CLEANUP_HINT_AWS_S = 180.0


@dataclass
class CleanUpStep:
    """One step of a job's clean-up; ``left``: what stays behind until it succeeds (None: nothing lasting)."""

    what: str
    run: Callable[[], object]
    left: str | None


def clean_up_steps(backend: Backend, *, job_id: str, results_url: str, settings: Settings, after_failure: bool,
                   dead_letters: Callable[[Queue], object] | None = None,
                   collect: Callable[[], object] | None = None) -> list[CleanUpStep]:
    """Stop the workers, delete the job's results queue, its dead letters and its S3 prefixes, in that order.

    ``dead_letters`` deletes the job's messages from the dead-letter queue it is given; None
    when the job gave up on no tile, so it has none there to look for. ``collect``, when given,
    runs once the workers are stopped and before anything is deleted: after an interrupt it saves
    the masks reported meanwhile, which the deletion would otherwise throw away.

    After a failure (or Ctrl-C) a step gets few retries: when the endpoint is gone, waiting out
    the full policy for each step would only delay the error the user must read.
    """
    retry = CLEANUP_RETRY_AFTER_FAILURE if after_failure else DEFAULT_POLICY
    sqs = backend.clients.sqs()
    storage = Storage(backend.clients.s3(), threads=settings.transfer_threads, retry=retry)
    prefix = f"{job_id}/"
    # Local workers die with this process; ECS tasks run on until they leave idle.
    workers_left = None if backend.name == "local" else (
        f"ECS worker tasks, which leave after {settings.idle_exit_s:.0f} s without work "
        "(python -m am.scale drain stops them now)")
    steps = [CleanUpStep("stop the workers", backend.launcher.stop, workers_left)]
    if collect is not None:
        steps.append(CleanUpStep("collect the masks reported while the job was interrupted", collect,
                                  "masks reported but not yet collected (a rerun segments those tiles again)"))
    steps.append(CleanUpStep(
        f"delete the results queue {results_url}", partial(delete_queue, sqs, results_url, retry=retry),
        f"the results queue {results_url} (aws sqs delete-queue --queue-url {results_url}; until it is gone, "
        "workers segment this job's tiles still on the tile queue for nobody)"))
    if dead_letters is not None:
        dlq = Queue(sqs, backend.dead_letter_queue_url, retry=retry)
        steps.append(CleanUpStep(
            f"delete the job's messages from the dead-letter queue {dlq.name}", partial(dead_letters, dlq),
            f"this job's messages in the dead-letter queue {dlq.name} (python -m am.scale redrive --drop-orphans "
            "deletes them once the results queue is gone)"))
    if not settings.keep_job_data:
        for bucket in (backend.input_bucket, backend.output_bucket):
            steps.append(CleanUpStep(
                f"delete s3://{bucket}/{prefix}", partial(storage.delete_prefix, bucket, prefix),
                f"the objects under s3://{bucket}/{prefix} (aws s3 rm --recursive s3://{bucket}/{prefix})"))
    return steps


def run_clean_up(steps: list[CleanUpStep], *, job_id: str, after_failure: bool, remaining: list[str]) -> None:
    """Run every step, even after one fails; ``remaining`` keeps what the steps not done (yet) leave behind.

    After a failure (or Ctrl-C) the error that ended the job is the one the user must read, so a
    clean-up step that fails is logged, not raised. After a success the first clean-up error is
    raised, since the job's data may have been left behind.
    """
    remaining[:] = [step.left for step in steps if step.left]
    errors: list[AmError] = []
    for step in steps:
        try:
            step.run()
        except AmError as exc:
            log.error("could not %s while ending job %s: %s", step.what, job_id, exc)
            errors.append(exc)
            continue
        if step.left:
            remaining.remove(step.left)
    if errors and not after_failure:
        raise errors[0]


class ForcedQuit(BaseException):
    """Raised by :class:`InterruptGuard` when the user insists on quitting a clean-up; ``Job.close`` turns it into
    CleanupIncomplete."""


class InterruptGuard:
    """Ctrl-C and SIGTERM while a job is open: the first interrupts the job; the next cannot cut its clean-up short.

    An interrupt raised inside the clean-up skips every step after it: the job's results queue
    and S3 objects stay on the endpoint (on AWS nothing ever deletes them), and the masks reported
    while the workers stopped are lost. People press Ctrl-C again while workers take seconds to
    stop, and ``timeout -s INT`` delivers its signal twice. So once the job is interrupted, or its
    clean-up has begun, a signal only logs that the clean-up runs and how to force the way out;
    one more forces it (:class:`ForcedQuit`), and ``Job.close`` says what was left behind.

    Installed in the main thread only, and only over Python-level handlers (the default Ctrl-C
    handler, the command line's SIGTERM one); any other disposition is left as it is.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, job_id: str, *, hint_s: float = CLEANUP_HINT_S) -> None:
        self.job_id = job_id
        self.hint_s = hint_s
        # Whether the clean-up saves the masks reported meanwhile (after an interrupt, not after a failure).
        self.collecting = False
        self.interrupted = False
        self.cleaning = False
        # Signals after the first interrupt, or during the clean-up.
        self.extra = 0
        self.forced = False
        self._previous: dict[int, Callable[[int, FrameType | None], object]] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            if callable(previous):
                self._previous[signum] = previous
                signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not (self.interrupted or self.cleaning):
            try:
                self._previous[signum](signum, frame)
            except BaseException:
                self.interrupted = True
                raise
            return
        if self.forced:
            return
        self.extra += 1
        if self.extra == 1:
            steps = ("stopping the workers, saving the masks they reported, deleting its queue and objects"
                     if self.collecting else "stopping the workers, deleting its queue and objects")
            log.warning("job %s is cleaning up: %s; this takes up to about %.0f s. Press Ctrl-C again (or send "
                        "SIGTERM again) to quit at once and leave them behind", self.job_id, steps, self.hint_s)
            return
        self.forced = True
        raise ForcedQuit(f"signal {signum} during the clean-up of job {self.job_id}")
