"""Build synthetic output in a staging folder and swap it in only when it is complete.

A run that fails half-way (bad options found late, out of memory, Ctrl-C) must neither leave half
a dataset behind, which the next run would then refuse or mix with its own, nor have deleted the
previous run's complete one. Everything is written under a hidden staging folder on the same file
system and renamed over its destination at the end::

    with staging(root / ".synth.partial") as stage:
        write_png(stage / "source" / "0000.png", image)
        swap_in(stage / "source", root / "source")
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def staging(folder: Path) -> Iterator[Path]:
    """A fresh, empty ``folder`` to write into, removed when the block ends, whether or not it succeeded.

    A leftover from an interrupted earlier run is removed first: it only ever holds unfinished output.
    """
    folder = Path(folder)
    if folder.exists():
        log.info("removing %s, left by an unfinished earlier run", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def swap_in(staged: Path, target: Path) -> None:
    """Replace the folder ``target`` (if any) by ``staged``, deleting the old one only once the new is in place."""
    staged, target = Path(staged), Path(target)
    old = staged.with_name(staged.name + ".old")
    had_old = target.exists()
    if had_old:
        target.rename(old)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(target)
    except BaseException:
        if had_old:
            old.rename(target)  # put the previous output back before reporting the failure
        raise
    if had_old:
        shutil.rmtree(old)
