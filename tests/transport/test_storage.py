"""Storage against moto: single objects, parallel batches, prefix deletion, model download."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from am.errors import InputError, MissingBucket, TransportError
from am.transport import storage as storage_module
from am.transport.storage import Storage, parse_s3_uri

from .conftest import FAST_RETRY


@pytest.fixture
def storage(s3: Any) -> Storage:
    store = Storage(s3, threads=8, retry=FAST_RETRY)
    store.ensure_bucket("bucket-in")
    return store


def test_ensure_bucket_is_idempotent(storage: Storage, s3: Any) -> None:
    storage.ensure_bucket("bucket-in")
    storage.ensure_bucket("other")
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert {"bucket-in", "other"} <= names


def test_put_and_get_bytes(storage: Storage) -> None:
    storage.put_bytes("bucket-in", "j1/g/0001.png", b"\x89PNG data")
    assert storage.get_bytes("bucket-in", "j1/g/0001.png") == b"\x89PNG data"


def test_missing_key_is_a_transport_error_naming_it(storage: Storage) -> None:
    with pytest.raises(TransportError, match=r"s3://bucket-in/j1/nope.png does not exist"):
        storage.get_bytes("bucket-in", "j1/nope.png")


def test_missing_bucket_is_named(storage: Storage) -> None:
    with pytest.raises(TransportError, match="bucket absent does not exist"):
        storage.get_bytes("absent", "k")


def test_a_write_to_a_missing_bucket_is_a_missing_bucket(storage: Storage) -> None:
    """As on reads: the worker stops on a missing bucket instead of failing every tile it writes."""
    with pytest.raises(MissingBucket, match=r"bucket absent does not exist \(writing k\); create it or fix the name"):
        storage.put_bytes("absent", "k", b"data")


def test_put_many_get_many_round_trip_in_parallel(storage: Storage, tmp_path: Path) -> None:
    items: list[tuple[str, bytes | Path]] = [(f"j1/g/{i:04d}.png", bytes([i % 256]) * (i + 1)) for i in range(60)]
    on_disk = tmp_path / "file.bin"
    on_disk.write_bytes(b"from a file")
    items.append(("j1/g/file.png", on_disk))
    seen: list[int] = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            seen.append(n)

    storage.put_many("bucket-in", items, progress=progress)
    assert sum(seen) == len(items)
    keys = [k for k, _ in items]
    got = storage.get_many("bucket-in", keys)
    assert got is not None
    assert got["j1/g/file.png"] == b"from a file"
    assert all(got[k] == v for k, v in items if isinstance(v, bytes))

    assert storage.get_many("bucket-in", keys, dest=lambda key: tmp_path / "out" / key) is None
    assert (tmp_path / "out/j1/g/0007.png").read_bytes() == bytes([7]) * 8
    assert not list((tmp_path / "out").rglob("*.part"))


def test_get_many_raises_the_first_error_and_stops(storage: Storage) -> None:
    storage.put_many("bucket-in", [(f"k/{i}", b"x") for i in range(5)])
    keys = ["k/0", "k/1", "k/missing", *[f"k/{i}" for i in range(2, 5)]]
    with pytest.raises(TransportError, match="s3://bucket-in/k/missing does not exist"):
        storage.get_many("bucket-in", keys)


def test_put_many_failure_cancels_the_rest(s3: Any) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    class Failing:
        def put_object(self, **kwargs: Any) -> None:
            with lock:
                calls.append(kwargs["Key"])
            if kwargs["Key"] == "k/0":
                raise TransportError("boom on k/0")

    store = Storage(Failing(), threads=1, retry=FAST_RETRY)
    with pytest.raises(TransportError, match="boom on k/0"):
        store.put_many("bucket-in", ((f"k/{i}", b"x") for i in range(1000)))
    assert len(calls) < 1000


def test_delete_prefix_removes_only_that_prefix_in_chunks(
    storage: Storage, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_module, "DELETE_BATCH", 7)
    storage.put_many("bucket-in", [(f"j1/g/{i:04d}.png", b"x") for i in range(30)])
    storage.put_many("bucket-in", [(f"j10/g/{i:04d}.png", b"x") for i in range(3)])
    storage.put_many("bucket-in", [(f"j2/g/{i:04d}.png", b"x") for i in range(3)])
    calls: list[int] = []
    original = s3.delete_objects

    def counting(**kwargs: Any) -> Any:
        calls.append(len(kwargs["Delete"]["Objects"]))
        return original(**kwargs)

    monkeypatch.setattr(s3, "delete_objects", counting)
    assert storage.delete_prefix("bucket-in", "j1/") == 30
    assert calls == [7, 7, 7, 7, 2]
    left = sorted(storage.list_keys("bucket-in", ""))
    assert len(left) == 6 and all(k.startswith(("j10/", "j2/")) for k in left)
    assert storage.delete_prefix("bucket-in", "j1/") == 0


def test_delete_prefix_refuses_the_whole_bucket(storage: Storage) -> None:
    with pytest.raises(InputError, match="non-empty prefix"):
        storage.delete_prefix("bucket-in", "")


def test_fetch_model_downloads_once_and_refreshes_on_change(storage: Storage, s3: Any, tmp_path: Path) -> None:
    storage.ensure_bucket("models")
    storage.put_bytes("models", "unet/model.pt", b"weights v1")
    cache = tmp_path / "cache"
    path = storage.fetch_model("s3://models/unet/model.pt", cache)
    assert path.read_bytes() == b"weights v1" and path.name == "model.pt"
    calls: list[str] = []
    original = s3.get_object
    s3.get_object = lambda **kw: calls.append(kw["Key"]) or original(**kw)
    assert storage.fetch_model("s3://models/unet/model.pt", cache) == path
    assert calls == []
    storage.put_bytes("models", "unet/model.pt", b"weights v2")
    newer = storage.fetch_model("s3://models/unet/model.pt", cache)
    assert newer != path and newer.read_bytes() == b"weights v2"
    assert not list(cache.rglob("*.part"))


def test_fetch_model_keeps_one_version_per_uri(storage: Storage, tmp_path: Path, monkeypatch) -> None:
    """A checkpoint replaced again and again under one URI leaves one file in the cache, not one per version."""
    storage.ensure_bucket("models")
    cache = tmp_path / "cache"
    storage.put_bytes("models", "other.pt", b"another model")
    other = storage.fetch_model("s3://models/other.pt", cache)
    storage.put_bytes("models", "unet.pt", b"weights v1")
    first = storage.fetch_model("s3://models/unet.pt", cache)
    storage.put_bytes("models", "unet.pt", b"weights v2")
    second = storage.fetch_model("s3://models/unet.pt", cache)
    assert first.is_file(), "a version downloaded moments ago may be about to load in another worker"

    monkeypatch.setattr(storage_module, "REPLACED_VERSION_GRACE_S", 0.0)
    storage.put_bytes("models", "unet.pt", b"weights v3")
    third = storage.fetch_model("s3://models/unet.pt", cache)
    assert third.read_bytes() == b"weights v3" and not first.exists() and not second.exists()
    assert sorted(p.read_bytes() for p in cache.rglob("*.pt")) == [b"another model", b"weights v3"]
    assert other.is_file()


class _ReplacedBeforeGet:
    """An S3 client on which ``replace()`` runs once, just before the first GetObject: the checkpoint is
    uploaded again between the HeadObject and the GetObject of a download."""

    def __init__(self, s3: Any, replace: Callable[[], None]) -> None:
        self._s3 = s3
        self._replace: Callable[[], None] | None = replace

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def get_object(self, **kwargs: Any) -> Any:
        if self._replace is not None:
            replace, self._replace = self._replace, None
            replace()
        return self._s3.get_object(**kwargs)


def test_fetch_model_files_a_checkpoint_replaced_during_its_download_under_its_own_version(
        storage: Storage, s3: Any, tmp_path: Path) -> None:
    """Filed under the version it replaced, the new bytes would be served for that version ever after:
    after a roll-back to it, say."""
    storage.ensure_bucket("models")
    storage.put_bytes("models", "unet.pt", b"weights A")
    cache = tmp_path / "cache"
    racing = Storage(_ReplacedBeforeGet(s3, lambda: storage.put_bytes("models", "unet.pt", b"weights B")),
                     retry=FAST_RETRY)
    got = racing.fetch_model("s3://models/unet.pt", cache)
    assert got.read_bytes() == b"weights B"
    assert storage.fetch_model("s3://models/unet.pt", cache) == got  # B is the version S3 holds
    storage.put_bytes("models", "unet.pt", b"weights A")  # rolled back
    assert storage.fetch_model("s3://models/unet.pt", cache).read_bytes() == b"weights A"


def test_fetch_model_missing_object(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(TransportError, match=r"s3://bucket-in/absent\.pt does not exist"):
        storage.fetch_model("s3://bucket-in/absent.pt", tmp_path)


@pytest.mark.parametrize("uri", ["models/x.pt", "s3://", "s3://bucket", "s3://bucket/", "s3://bucket/dir/"])
def test_parse_s3_uri_rejects_incomplete_uris(uri: str) -> None:
    with pytest.raises(InputError):
        parse_s3_uri(uri)


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://b/a/c.pt") == ("b", "a/c.pt")
