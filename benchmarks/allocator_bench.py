"""Kernel CPU time that freed memory kept by ``am.model.memory.retain_freed_memory`` saves.

    python benchmarks/allocator_bench.py [--rounds 20] [--block-mb 50] [--blocks 4]

In a fresh process each, with glibc's allocator as it is and with the setting applied: on a
thread, as the worker's compute thread does with a batch's activations, allocate, fill and free
``--blocks`` blocks of ``--block-mb`` MB, ``--rounds`` times after a first round, and print the
kernel (system) CPU seconds those rounds took. Mapping blocks afresh makes the kernel zero-fill
every page again; reused blocks need none of it (0.48 s against 0.0004 s for 20 rounds of
200 MB on the 2-core development VM). Linux with glibc only: elsewhere the setting does nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent("""
    import resource, sys, threading
    import numpy as np
    from am.model.memory import retain_freed_memory
    mode, rounds, block_bytes, blocks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    applied = retain_freed_memory() if mode == "retain" else False
    seconds = []
    def run():
        for _ in range(rounds + 1):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            held = [np.ones(block_bytes, np.uint8) for _ in range(blocks)]
            del held
            seconds.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - before)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    print(applied, sum(seconds[1:]), *seconds)  # the figures of every round: the caller counts them
""")


class ProbeFailed(Exception):
    """The probe process did not measure what was asked; the message says what it printed."""


def kernel_seconds(mode: str, *, rounds: int, block_mb: int, blocks: int) -> tuple[bool, float]:
    """Whether the setting took effect in the probe process, and its kernel seconds after the first round.

    The probe reports one figure per round: a probe that failed, or measured other than
    ``rounds`` + 1 rounds, raises :class:`ProbeFailed` with its output rather than passing for a
    measurement (a sum of no rounds reads as 0 s, the best result there is).
    """
    done = subprocess.run([sys.executable, "-c", PROBE, mode, str(rounds), str(block_mb << 20), str(blocks)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 2 + rounds + 1 or fields[0] not in ("True", "False"):
        raise ProbeFailed(f"the {mode} probe (exit code {done.returncode}) did not report {rounds + 1} rounds; "
                          f"its output:\n{done.stdout}{done.stderr}".rstrip())
    return fields[0] == "True", float(fields[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="rounds measured, after a first one (default 20)")
    p.add_argument("--block-mb", type=int, default=50, help="size of each block in MB (default 50)")
    p.add_argument("--blocks", type=int, default=4, help="blocks allocated and freed per round (default 4)")
    args = p.parse_args(argv)
    for option, value in (("--rounds", args.rounds), ("--block-mb", args.block_mb), ("--blocks", args.blocks)):
        if value < 1:
            p.error(f"{option} {value}: give a whole number >= 1")
    if not sys.platform.startswith("linux"):
        print("the setting is glibc's; on this system the allocator is left as it is", file=sys.stderr)
        return 2
    size = args.blocks * args.block_mb
    for mode, name in (("default", "allocator as it is"), ("retain", "freed memory kept")):
        try:
            applied, seconds = kernel_seconds(mode, rounds=args.rounds, block_mb=args.block_mb, blocks=args.blocks)
        except ProbeFailed as exc:
            print(f"allocator_bench: {exc}", file=sys.stderr)
            return 1
        note = "" if applied or mode == "default" else " (the setting did not take effect)"
        print(f"{name:20s} {seconds:8.4f} s kernel CPU for {args.rounds} rounds of {size} MB{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
