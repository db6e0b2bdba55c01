"""The allocator setting that keeps CPU inference from mapping its memory afresh for every batch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from am.model.memory import retain_freed_memory

# On a thread, as the worker's compute thread does with a batch's activations: allocate, fill
# and free 200 MB in 50 MB blocks, 20 times; print the kernel (system) CPU seconds it took after
# the first round. Mapping blocks afresh makes the kernel zero-fill every page again.
PROBE = textwrap.dedent("""
    import resource, sys, threading
    import numpy as np
    from am.model.memory import retain_freed_memory
    applied = retain_freed_memory() if sys.argv[1] == "retain" else False
    seconds = []
    def rounds():
        for _ in range(21):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            blocks = [np.ones(50 << 20, np.uint8) for _ in range(4)]
            del blocks
            seconds.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - before)
    thread = threading.Thread(target=rounds)
    thread.start()
    thread.join()
    print(applied, sum(seconds[1:]))
""")


def _kernel_seconds(mode: str) -> tuple[bool, float]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    applied, seconds = done.stdout.split()
    return applied == "True", float(seconds)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is glibc's; other systems keep theirs")
def test_freed_blocks_are_reused_instead_of_mapped_again() -> None:
    applied, kept = _kernel_seconds("retain")
    assert applied
    _, mapped = _kernel_seconds("default")
    # 4 GB zero-filled by the kernel takes a good fraction of a second; reused blocks need none of it.
    assert mapped > 0.1, f"the default allocator cost only {mapped:.3f} s in the kernel: nothing to compare"
    assert kept < 0.25 * mapped, (kept, mapped)


def test_the_first_answer_stands() -> None:
    assert retain_freed_memory() == retain_freed_memory()
