"""Atomic file output: readers (and reruns after a crash) never see half a file.

Every file am-segm writes into a dataset, and every object it downloads, goes through here::

    write_atomic(path, data)
    with atomic_output(path) as handle:
        tifffile.imwrite(handle, image)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_output(path: Path) -> Iterator[IO[bytes]]:
    """A new temporary file beside ``path``, synced and renamed over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # Exclusive create with default permissions (the umask decides, as for any ordinary file).
        with tmp.open("xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write bytes, or an iterable of chunks (a streamed download), to ``path`` atomically."""
    with atomic_output(path) as handle:
        if isinstance(data, (bytes, bytearray, memoryview)):
            handle.write(data)
        else:
            for chunk in data:
                handle.write(chunk)
