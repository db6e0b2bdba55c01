"""S3 objects: tiles and masks in, tiles and masks out, model checkpoints, cleanup.

Single objects and parallel batches share the retry policy of :mod:`am.transport.retry`.
A batch runs on a thread pool; its first error stops what has not started and is raised,
so a half-uploaded job never looks complete::

    storage = Storage(clients.s3(), threads=16)
    storage.put_many("am-segm-input", [(f"{job}/g/0001.png", png_bytes), ...], progress=bar.update)
    masks = storage.get_many("am-segm-output", keys)            # {key: bytes}
    path = storage.fetch_model("s3://models/unet.pt", Path("~/.cache/am-segm").expanduser())
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from botocore.exceptions import ClientError

from am.errors import ConfigError, InputError, MissingBucket, MissingObject, TransportError
from am.files import write_atomic
from am.interrupts import ThreadPool, deferred_interrupts, wait_for
from am.transport.retry import DEFAULT_POLICY, RetryPolicy, error_code, http_status

log = logging.getLogger(__name__)

T = TypeVar("T")

# Keys per DeleteObjects call (S3 API reference, DeleteObjects:
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html).
DELETE_BATCH = 1000
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
# A read refused outright; HeadObject has no body, so its code is the bare status. Throttling
# that some S3-compatible stores send with 403 has its own code and stays retryable.
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden"})
BUCKET_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou"})
# Chunk size when streaming a large object (a checkpoint) to disk.
STREAM_CHUNK_BYTES = 1 << 20
# A replaced model version downloaded less than this long ago stays in the cache: another worker
# on the host may have just been handed its path and not yet loaded it.
REPLACED_VERSION_GRACE_S = 600.0
# Futures in flight per thread: enough to keep threads busy, few enough that a generator of
# file paths is not read ahead into memory all at once.
_WINDOW_PER_THREAD = 4


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key); InputError for anything else."""
    if not uri.startswith("s3://"):
        raise InputError(f"{uri!r} is not an s3:// URI; write it as s3://BUCKET/KEY")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise InputError(f"S3 URI {uri!r} must name a bucket and an object key: s3://BUCKET/KEY")
    return bucket, key


class Storage:
    """S3 reads and writes for one client; ``threads`` bounds the parallel transfers of a batch."""

    def __init__(self, s3_client: Any, *, threads: int = 16, retry: RetryPolicy = DEFAULT_POLICY) -> None:
        if threads < 1:
            raise TransportError(f"transfer threads must be at least 1, got {threads}")
        self._s3 = s3_client
        self._threads = threads
        self._retry = retry

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` unless it exists and is ours."""

        def attempt() -> None:
            try:
                self._s3.head_bucket(Bucket=bucket)
                return
            except ClientError as exc:
                if http_status(exc) != 404 and error_code(exc) not in NOT_FOUND_CODES | NO_BUCKET_CODES:
                    raise
            region = self._s3.meta.region_name
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if region and region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self._s3.create_bucket(**kwargs)
                log.info("created bucket %s", bucket)
            except ClientError as exc:
                if error_code(exc) not in BUCKET_EXISTS_CODES:
                    raise

        self._retry.call(f"ensure bucket {bucket}", attempt)

    def bucket_exists(self, bucket: str) -> bool:
        """Whether ``bucket`` exists; a refusal (403) or the network is a TransportError, not a no."""

        def attempt() -> bool:
            try:
                self._s3.head_bucket(Bucket=bucket)
            except ClientError as exc:
                if http_status(exc) == 404 or error_code(exc) in NOT_FOUND_CODES | NO_BUCKET_CODES:
                    return False
                raise
            return True

        return self._retry.call(f"head bucket {bucket}", attempt)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        """Write one object; writing the same bytes twice is harmless (at-least-once delivery relies on it).

        A bucket that does not exist is a MissingBucket, as on reads: the fault of a deployment, not of
        the object, so a worker stops instead of failing every tile.
        """

        def attempt() -> None:
            try:
                self._s3.put_object(Bucket=bucket, Key=key, Body=data)
            except ClientError as exc:
                if error_code(exc) in NO_BUCKET_CODES:
                    raise MissingBucket(f"bucket {bucket} does not exist (writing {key}); create it or fix "
                                        "the name") from exc
                raise

        self._retry.call(f"put s3://{bucket}/{key}", attempt)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """Read one object; a missing key is a TransportError at once, not retried."""

        def attempt() -> bytes:
            try:
                response = self._s3.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                self._raise_if_missing(exc, bucket, key)
                raise
            return bytes(response["Body"].read())

        return self._retry.call(f"get s3://{bucket}/{key}", attempt)

    def put_many(
        self,
        bucket: str,
        items: Iterable[tuple[str, bytes | Path]],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Upload (key, bytes or file path) pairs in parallel; ``progress(1)`` after each object.

        The first failure cancels the uploads not yet started and is raised.
        """

        def put(item: tuple[str, bytes | Path]) -> None:
            key, source = item
            data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
            self.put_bytes(bucket, key, bytes(data))

        for _ in self._parallel(put, items):
            if progress is not None:
                progress(1)

    def get_many(
        self, bucket: str, keys: Iterable[str], *, dest: Callable[[str], Path] | None = None,
        skip_missing: bool = False,
    ) -> dict[str, bytes] | None:
        """Download keys in parallel: into memory ({key: bytes}), or, with ``dest``, each to the file ``dest(key)``.

        Files are written atomically (temporary name, then rename), so an interrupted download
        leaves no half file. Returns None when writing files. The first failure is raised; with
        ``skip_missing``, a key that does not exist is left out of the result instead, for a
        caller that can blame that one object (a missing bucket or a refusal still raises).
        """
        out: dict[str, bytes] = {}

        def get(key: str) -> None:
            try:
                data = self.get_bytes(bucket, key)
            except MissingObject:
                if skip_missing:
                    return
                raise
            if dest is None:
                out[key] = data
            else:
                write_atomic(dest(key), data)

        for _ in self._parallel(get, keys):
            pass
        return None if dest is not None else out

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]:
        """Every key under ``prefix``, page by page."""
        paginator = self._s3.get_paginator("list_objects_v2")
        pages = self._retry.call(
            f"list s3://{bucket}/{prefix}", lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix))
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under ``prefix`` (which must not be empty); returns how many were deleted."""
        if not prefix:
            raise InputError(f"refusing to delete every object of bucket {bucket}: give a non-empty prefix")
        keys = list(self.list_keys(bucket, prefix))
        for start in range(0, len(keys), DELETE_BATCH):
            chunk = keys[start : start + DELETE_BATCH]
            response = self._retry.call(
                f"delete {len(chunk)} objects under s3://{bucket}/{prefix}", self._s3.delete_objects,
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise TransportError(
                    f"could not delete {len(errors)} object(s) under s3://{bucket}/{prefix}, e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}"
                )
        log.info("deleted %d object(s) under s3://%s/%s", len(keys), bucket, prefix)
        return len(keys)

    def fetch_model(self, uri: str, cache_dir: Path) -> Path:
        """Download an ``s3://`` checkpoint once into ``cache_dir``; later calls reuse the file.

        The cached path holds the object's ETag, so a checkpoint replaced under the same URI is
        downloaded again instead of being served stale; the versions it replaced are then
        removed, so a host whose models are replaced again and again keeps one file per URI.
        A download is filed under the ETag its GetObject answered with, not the HeadObject's: the
        object may be replaced between the two, and bytes filed under another version's ETag would
        be served for that version from then on (after a roll-back, say).
        """
        bucket, key = parse_s3_uri(uri)
        head = self.head_object(uri)
        versions = Path(cache_dir) / _digest(uri)

        def path_of(version: dict[str, Any]) -> Path:
            return versions / _digest(object_version(version)) / Path(key).name

        path = path_of(head)
        if path.is_file():
            log.debug("model %s cached at %s", uri, path)
            return path

        def attempt() -> Path:
            try:
                response = self._s3.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                self._raise_if_missing(exc, bucket, key)
                raise
            got = path_of(response)
            if got != path:
                log.info("model %s was replaced while it was being looked up: downloading the version "
                         "S3 now holds", uri)
            if got.is_file():
                response["Body"].close()
                log.debug("model %s cached at %s", uri, got)
                return got
            write_atomic(got, response["Body"].iter_chunks(STREAM_CHUNK_BYTES))
            log.info("downloaded model %s to %s", uri, got)
            return got

        path = self._retry.call(f"download {uri}", attempt)
        _remove_replaced_versions(versions, keep=path.parent)
        return path

    def head_object(self, uri: str) -> dict[str, Any]:
        """HeadObject of an ``s3://`` URI (size, ETag, ...); TransportError naming the URI if it cannot be read."""
        bucket, key = parse_s3_uri(uri)
        return self._retry.call(f"head {uri}", self._head, bucket, key)

    def _head(self, bucket: str, key: str) -> dict[str, Any]:
        try:
            return dict(self._s3.head_object(Bucket=bucket, Key=key))
        except ClientError as exc:
            self._raise_if_missing(exc, bucket, key)
            raise

    @staticmethod
    def _raise_if_missing(exc: ClientError, bucket: str, key: str) -> None:
        code = error_code(exc)
        if code in NO_BUCKET_CODES:
            raise MissingBucket(f"bucket {bucket} does not exist (reading {key}); create it or fix the name") from exc
        if code in NOT_FOUND_CODES or http_status(exc) == 404:
            raise MissingObject(f"s3://{bucket}/{key} does not exist; check the key or upload the object") from exc
        if code in ACCESS_DENIED_CODES:
            raise TransportError(
                f"s3://{bucket}/{key} cannot be read: access denied (HTTP 403). Without s3:ListBucket on {bucket}, "
                "S3 answers 403 also for a key that does not exist: check the key first, then the caller's "
                "s3:GetObject right on it"
            ) from exc

    def _parallel(self, fn: Callable[[T], None], items: Iterable[T]) -> Iterator[None]:
        """Run ``fn`` on each item with at most ``threads`` at once; yield after each success.

        The first exception cancels whatever has not started, waits for running calls, and is raised.
        Ctrl-C meanwhile cuts that wait short (see :class:`am.interrupts.ThreadPool`).
        """
        window = self._threads * _WINDOW_PER_THREAD
        with ThreadPool(self._threads, thread_name_prefix="am-transfer") as pool:
            running: set[Future[None]] = set()
            try:
                for item in items:
                    running.add(pool.submit(fn, item))
                    if len(running) >= window:
                        running = yield from _drain(running, until=window // 2)
                yield from _drain(running, until=0)
            except BaseException:
                with deferred_interrupts():
                    for future in running:
                        future.cancel()
                raise


class NamedBucket(NamedTuple):
    """A bucket, the setting that names it and the stack output that holds it on AWS: what a message
    about the bucket must name for the reader to know what to fix."""

    bucket: str
    setting: str
    output: str


def require_existing_buckets(
    storage: Storage,
    buckets: Iterable[NamedBucket],
    *,
    missing: Callable[[NamedBucket], str],
    unchecked: Callable[[NamedBucket, TransportError], None],
) -> None:
    """Refuse the first of ``buckets`` that does not exist with ``ConfigError(missing(bucket))``.

    The worker and the orchestrator both check their tile and mask buckets before any work, and
    differ only in what they say and in what a bucket that cannot be checked (HeadBucket refused,
    the network) means to them: ``unchecked(bucket, error)`` decides, raising to refuse or returning
    to go on to the next bucket (after logging why).
    """
    for named in buckets:
        try:
            exists = storage.bucket_exists(named.bucket)
        except TransportError as exc:
            unchecked(named, exc)
            continue
        if not exists:
            raise ConfigError(missing(named))


def object_version(head: dict[str, Any]) -> str:
    """Which version of an object a HeadObject answer describes: its ETag, else its upload time, else ''.

    The orchestrator's record of a job's model and the workers' download cache both tell
    checkpoints uploaded under one key apart by this, so they agree on what "replaced" means.
    """
    return str(head.get("ETag", "")).strip('"') or str(head.get("LastModified", ""))


def _digest(text: str) -> str:
    """A short, file-name-safe name for a URI or an ETag."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _remove_replaced_versions(versions: Path, *, keep: Path) -> None:
    """Remove the cached versions of one model URI other than ``keep``, unless downloaded just now."""
    cutoff = time.time() - REPLACED_VERSION_GRACE_S
    for folder in versions.iterdir():
        if folder == keep or not folder.is_dir():
            continue
        try:
            if max((f.stat().st_mtime for f in folder.iterdir()), default=0.0) > cutoff:
                continue
            shutil.rmtree(folder)
        except FileNotFoundError:
            continue  # another worker on this host removed it first
        log.info("removed a replaced version of a cached model: %s", folder)


def _drain(running: set[Future[None]], *, until: int) -> Generator[None, None, set[Future[None]]]:
    """Wait until at most ``until`` futures run, yielding once per success; raise the first failure."""
    while len(running) > until:
        done, pending = wait_for(running, return_when=FIRST_EXCEPTION)
        # Every one is done: result() returns or raises at once.
        with deferred_interrupts():
            for future in done:
                future.result()
        for _ in done:
            yield None
        running = pending
    return running


__all__ = ["DELETE_BATCH", "NamedBucket", "Storage", "parse_s3_uri", "require_existing_buckets"]
