"""The exception family of am-segm.

Every error the package raises on purpose derives from :class:`AmError`, so the command-line
edge can turn any of them into a clear message and a non-zero exit without catching
programming errors by accident. Messages name the file or value at fault and say what to do.
"""

from __future__ import annotations


class AmError(Exception):
    """Root of every error am-segm raises deliberately."""


class InputError(AmError):
    """A user-supplied file, folder or argument cannot be used as given.

    ``reason`` is what is wrong with the file alone, without its name or the fix: a caller that
    reads one of its own intermediate files wraps it with the fix that applies there, instead of
    the one meant for a user's input (``describe_fault``).
    """

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


def describe_fault(exc: InputError) -> str:
    """What is wrong, for a message that names the file and the fix itself: the reason, else the whole message."""
    return exc.reason or str(exc)


class ConfigError(AmError):
    """A configuration file, environment variable or option has a bad value."""


class CheckpointError(AmError):
    """A model file is missing, not a checkpoint, or describes an unsupported model."""


class MessageError(AmError):
    """A queue message does not parse or points outside its job's prefix."""


class TransportError(AmError):
    """S3 or SQS failed after retries, or an endpoint cannot be reached."""


class MissingObject(TransportError):
    """An S3 key that does not exist in a bucket that does: one object's fault, not the connection's."""


class MissingBucket(TransportError):
    """An S3 bucket that does not exist: every object of it is missing, a deployment's fault."""


class WorkerError(AmError):
    """A worker could not start or could not process its work."""


class LauncherError(AmError):
    """Workers could not be started, or all of them stopped while work was pending."""


class ScaleError(AmError):
    """An operators' command could not read or change the AWS workers, queues or scaling limits."""


class JobFailed(AmError):
    """A job ended with tiles that did not complete.

    ``failed`` maps a tile name (``group/NNNN``) to the reason it failed, so the message can
    list them and a rerun can redo only those.
    """

    def __init__(self, message: str, failed: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failed = dict(failed or {})


class JobTimeout(JobFailed):
    """A job did not finish within its time budget."""


class ModelReplaced(JobFailed):
    """The job's ``s3://`` checkpoint was replaced under its key while the tiles were segmented."""


class CleanupIncomplete(AmError):
    """A job's clean-up was cut short (Ctrl-C pressed again while it ran): its message names what was left behind."""


class StitchError(AmError):
    """Mask tiles cannot be stitched: some are missing, misshapen or conflict with a delivered copy."""


class RegistrationError(AmError):
    """The marks cannot be registered to the requested acquisition grid."""
