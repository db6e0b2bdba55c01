"""The allocator setting that keeps CPU inference from mapping its memory afresh for every batch.

What it saves (kernel CPU seconds) is measured by ``python benchmarks/allocator_bench.py``; here,
that the right ``mallopt`` calls are made, what their outcome is reported as, and that the first
answer is kept.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import am.model.memory as memory
from am.model.memory import KEEP_BYTES, M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, retain_freed_memory


class FakeLibc:
    """A C library whose ``mallopt`` records its calls and answers ``answer`` (glibc: 1 on success)."""

    def __init__(self, *, answer: int = 1, glibc: bool = True) -> None:
        self.calls: list[tuple[int, int]] = []

        def mallopt(param: int, value: int) -> int:
            self.calls.append((param, value))
            return answer

        self.mallopt: Callable[[int, int], int] = mallopt
        if glibc:
            self.gnu_get_libc_version = lambda: b"2.36"


def with_libc(monkeypatch: pytest.MonkeyPatch, libc: FakeLibc) -> None:
    monkeypatch.setattr(memory.sys, "platform", "linux")
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: libc)


def test_on_glibc_large_blocks_come_from_one_arena_and_freed_memory_is_kept(monkeypatch) -> None:
    libc = FakeLibc()
    with_libc(monkeypatch, libc)
    assert memory._apply() is True
    assert libc.calls == [(M_MMAP_THRESHOLD, KEEP_BYTES), (M_TRIM_THRESHOLD, KEEP_BYTES), (M_ARENA_MAX, 1)]
    assert KEEP_BYTES == 2**31 - 1  # the largest C int mallopt takes


def test_a_refused_setting_is_reported_as_not_applied(monkeypatch, caplog) -> None:
    libc = FakeLibc(answer=0)
    with_libc(monkeypatch, libc)
    assert memory._apply() is False
    assert len(libc.calls) == 3
    assert "glibc refused the allocator settings" in caplog.text


def test_other_c_libraries_are_left_as_they_are(monkeypatch) -> None:
    libc = FakeLibc(glibc=False)
    with_libc(monkeypatch, libc)
    assert memory._apply() is False
    assert libc.calls == []
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory._apply() is False


def test_a_missing_c_library_leaves_the_allocator_as_it_is(monkeypatch) -> None:
    def missing(name: str) -> Any:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(memory.sys, "platform", "linux")
    monkeypatch.setattr(memory.ctypes, "CDLL", missing)
    assert memory._apply() is False


def test_the_first_answer_stands(monkeypatch) -> None:
    calls: list[None] = []

    def counted() -> bool:
        calls.append(None)
        return True

    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory, "_apply", counted)
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True
    assert len(calls) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is glibc's; other systems keep theirs")
def test_the_real_c_library_takes_the_setting() -> None:
    # In a process of its own: the setting is process-wide, and this one's allocator is pytest's.
    done = subprocess.run([sys.executable, "-c", "from am.model.memory import retain_freed_memory as r; print(r())"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "True", done.stderr
