"""The command-line edge shared by every ``python -m am.<name>`` entry point.

Only here do exceptions become exit codes: 0 on full success, 1 for an am-segm error (the
message says what to fix) or a file-system error (the message names the file, the reason and
what to do), 2 for bad usage (argparse's errors, and a setting given as an option that is not
allowed: :class:`~am.settings.OptionError`), 130 after Ctrl-C, SIGTERM or SIGHUP (a clean-up quit
by a third Ctrl-C included).
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from tqdm import tqdm

from am.errors import AmError, CleanupIncomplete
from am.files import check_writable, nearest_existing
from am.settings import AUTO_SCALE, LOG_LEVELS, OptionError, scale_value

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# "on": masks as the model's checkpoint asks (touching marks cut apart, specks dropped); "off": thresholded only.
POSTPROCESS_MODES = ("on", "off")
# How the model runs, for workers (AM_PRECISION, AM_COMPILE) and commands alike; defined here, away
# from torch, so that the worker's configuration checks them without loading the model code.
# Precision auto: fp16 on CUDA, bf16 on a CPU with AMX, fp32 on other CPUs. Compile auto: on CUDA only.
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
COMPILE_MODES = ("auto", "on", "off")


SCALE_HELP = ("resize factor applied before segmentation and undone after, for marks much larger (e.g. 0.5) or "
              f"smaller (e.g. 2) than the model was trained on; {AUTO_SCALE}: read each image's mark pitch and "
              "resize only an image whose marks are far outside the model's range (default 1)")


def scale_option(text: str) -> float | str:
    """The argparse type of ``--scale``: a factor, or ``auto``; the range is the setting's to check."""
    try:
        return scale_value(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or {AUTO_SCALE}") from None


# Seeds are non-negative and fit 32 bits: numpy refuses negative ones and torch overflows on huge
# ones, each with a traceback and, in the training commands, only once work has begun.
MAX_SEED = 2**32 - 1


def seed_option(text: str) -> int:
    """The argparse type of every ``--seed``-like option: an integer from 0 to :data:`MAX_SEED`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text} is outside 0..{MAX_SEED}; give a seed in that range")
    return value


def text_option(text: str) -> str:
    """The argparse type of an option that names something (a config file, a model, a job): refuses an
    empty or blank value, which commands would otherwise take as "not given" and use their default."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty; give a value, or leave the option out")
    return text


def path_option(text: str) -> Path:
    """The argparse type of every file or folder option: ``Path("")`` is the current folder, so an
    empty or blank value would read or write there without a word; it is refused instead."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty path, which would mean the current folder; "
                                         "give a file or folder path")
    return Path(text)


def device_option(text: str) -> str:
    """The argparse type of ``--device``: refuses an empty or blank name, which would be taken as not
    given, and a CPU index other than 0 (torch takes ``cpu:1`` and runs on its one CPU device all the
    same). Whether the device exists on this machine is the command's to check (am.model.device)."""
    name = text.strip()
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r} is empty; give cpu or cuda (cuda:N for the N-th GPU), or leave "
                                         "--device out for cuda when available")
    if name.lower().startswith("cpu:") and name[4:] != "0":
        raise argparse.ArgumentTypeError(f"{text!r}: torch has one CPU device, which uses every core; give cpu "
                                         "(--threads sets the cores used)")
    return text


def channels_option(text: str) -> tuple[int, ...]:
    """The argparse type of ``--decoder-channels``: positive whole numbers separated by commas; how many
    the model needs is the command's to check."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"channel counts must be positive, got {text!r}")
    return values


# Libraries that log every HTTP request with its headers at DEBUG: botocore's lines carry the
# access key id (in Authorization) and the session token (X-Amz-Security-Token) of the caller.
WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def configure_logging(level: str = "INFO") -> None:
    """Every command logs the same way; ``force`` lets a second call (tests, embedding) change the level."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    quiet_wire_loggers()


def quiet_wire_loggers() -> None:
    """Keep the AWS libraries at WARNING or above, whatever the level of the root logger.

    Credentials must never appear in logs, and a DEBUG log is what gets attached to a bug report:
    at DEBUG these libraries would write the caller's access key id and session token with every
    request. Their warnings and errors (retries, connection trouble) still come through.
    """
    floor = max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    for name in WIRE_LOGGERS:
        logging.getLogger(name).setLevel(floor)


def add_log_level_option(parser: argparse.ArgumentParser, default: str | None = "INFO") -> None:
    """The one ``--log-level`` option of every command. ``default=None`` leaves the level to the
    command's settings (option, ``AM_LOG_LEVEL``, config file, then INFO); ``argparse.SUPPRESS``
    gives a subcommand's copy, which sets the level only when given (the main parser's default stays)."""
    if default == argparse.SUPPRESS:
        where = "default: as given before the command, else INFO"
    else:
        where = f"default {default}" if default else "default: the settings' log_level, INFO"
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=default, type=str.upper,
                        help=f"logging detail on stderr ({where}; any case)")


def add_postprocess_option(parser: argparse.ArgumentParser) -> None:
    """The one ``--postprocess`` switch of every command that makes masks to measure them."""
    parser.add_argument("--postprocess", choices=POSTPROCESS_MODES, default="on",
                        help="masks as the checkpoint asks: touching marks cut apart, specks dropped (default on)")


def add_precision_option(parser: argparse.ArgumentParser, choices: tuple[str, ...] = PRECISIONS) -> None:
    """The one ``--precision`` option of every command that runs the model (``choices``: those of
    :data:`PRECISIONS` the command can run)."""
    auto = "fp16 on CUDA, bf16 on a CPU with AMX, fp32 on other CPUs" if "fp16" in choices else \
        "bf16 on a CPU with AMX, fp32 on other CPUs"
    parser.add_argument("--precision", choices=choices, default="auto",
                        help=f"arithmetic of the forward pass (default auto, as workers choose: {auto})")


def output_problem(path: Path, *, folder: bool) -> str | None:
    """Why ``path`` cannot be written as an output folder (``folder``) or file, or None if it can.

    Commands check it before any work, so a bad output path does not fail after minutes of it.
    """
    if path.exists() and path.is_dir() != folder:
        return f"{path} is {'a file' if folder else 'a folder'}; give a {'folder' if folder else 'file'} path"
    place = nearest_existing(path if folder else path.parent)
    if not place.exists():
        return None
    if not place.is_dir():
        return f"{place} is a file, so {path} cannot be made"
    # Where the first file will be made: a read-only folder would otherwise fail only at the end.
    try:
        check_writable(place)
    except OSError as exc:
        return describe_os_error(exc)
    return None


def masks_label(postprocess: bool) -> str:
    """How a command's masks were made, for the line that names the model."""
    return "masks post-processed" if postprocess else "masks thresholded only"


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# What to do about a file-system error, by errno; {target} is the file, or the nearest folder of
# it that exists (a folder that cannot be created is its parent's fault). Others: _OS_ADVICE_OTHER.
_OS_ADVICE = {
    errno.ENOSPC: "free space on the disk holding {target} (or work on another disk), then rerun the same command",
    errno.EDQUOT: "free space within your disk quota on {target} (or ask for a larger quota), then rerun the same "
                  "command",
    errno.EFBIG: "the file grew past what the file system or a ulimit allows; raise the limit or work on another "
                 "disk, then rerun the same command",
    errno.EACCES: "fix the permissions of {target} so that this user can read it (and write it, where the command "
                  "writes) (ls -ld, chmod, chown), then rerun the same command",
    errno.EPERM: "fix the permissions or flags of {target} so that this user can write it (ls -ld, chmod, chown; "
                 "lsattr, chattr -i for an immutable one), then rerun the same command",
    errno.EROFS: "{target} is on a file system mounted read-only; copy the data to a writable disk or remount it, "
                 "then rerun the same command",
    errno.ENOENT: "check that it exists and was not moved or deleted while the command ran, then rerun",
    errno.ENOTDIR: "a file stands where a folder is expected; move that file aside and rerun the same command",
    errno.EISDIR: "a folder stands where a file is expected; move that folder aside and rerun the same command",
    errno.EEXIST: "something already stands at that path; move it aside and rerun the same command",
}
_OS_ADVICE_OTHER = "check {target} and its disk, then rerun the same command"
_NETWORK_ADVICE = "check the network and the endpoint this command talks to, then rerun the same command"


def _existing(filename: object) -> str:
    """``filename``, or its nearest folder that exists: what a user can inspect and fix."""
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return str(filename)
    path = Path(os.fsdecode(filename))
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return str(candidate)
    return str(path)


def threads_problem(threads: int, *, option: str = "--threads") -> str | None:
    """Why ``threads`` cannot be torch's CPU thread count here, or None (0: torch's default).

    Far beyond the machine's CPUs torch's thread pool crashes (a segfault, or a libgomp error)
    instead of refusing, and any number above them only slows the work down.
    """
    if threads < 0:
        return f"{option} {threads}: give a number of CPU threads >= 1, or 0 for torch's default"
    return beyond_cpus_problem(threads, option=option, zero_means="all")


def beyond_cpus_problem(count: int, *, option: str, zero_means: str) -> str | None:
    """Why ``count`` threads or processes, at most one per CPU, cannot run here, or None.

    More than the CPUs only share the same cores; thousands crash torch's thread pool or exhaust
    memory (a data loader process holds hundreds of MB) instead of being refused.
    """
    cpus = os.cpu_count()
    if cpus is not None and count > cpus:
        return f"{option} {count}: this machine has {cpus} CPUs; give 0 ({zero_means}) to {cpus}"
    return None


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the file(s), the reason and what to do.

    The command line's users see file-system failures (full disk, read-only dataset) as often as
    our own errors; a traceback names neither the cure nor, at a glance, the file.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    advice = _OS_ADVICE.get(exc.errno, _OS_ADVICE_OTHER) if exc.errno is not None else _OS_ADVICE_OTHER
    if exc.filename is None:
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return f"{reason}{code}; {_NETWORK_ADVICE}"
        return f"{reason}{code}; {advice.format(target='the folders this command writes to')}"
    where = str(exc.filename) if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"cannot use {where}: {reason}{code}; {advice.format(target=_existing(exc.filename))}"


def enable_stack_dumps() -> None:
    """SIGUSR1 prints every thread's stack to stderr and the process runs on (``kill -USR1 <pid>``).

    A command or worker that seems stuck can then say where, without being stopped. The stacks go
    to file descriptor 2 where ``sys.stderr`` has none (captured, or replaced by a notebook).
    """
    if not hasattr(signal, "SIGUSR1"):
        return
    try:
        stream = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both an OSError and a ValueError
        stream = 2
    faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)


# What Ctrl-C leaves, said after "interrupted; cleaned up": each command says what is true of it.
RERUN_TO_RESUME = "finished work is kept, rerun the same command to resume"
RERUN_TO_START_AGAIN = ("earlier outputs are as they were and nothing of this run was kept; rerun the same command "
                        "to start again")


def run_main(main: Callable[[], int], *, name: str, interrupted: str = "", server: bool = False) -> int:
    """Run ``main`` and map its outcome to an exit code; SIGTERM is handled like Ctrl-C so cleanup runs.

    ``interrupted`` ends the message after Ctrl-C: what the run left and how to go on
    (:data:`RERUN_TO_RESUME`, :data:`RERUN_TO_START_AGAIN`). For a ``server`` Ctrl-C and SIGTERM
    are how it is stopped, not a failure: it logs that it stopped and exits 0, as a supervisor
    (systemd, ECS, Kubernetes) expects of a service it stops. SIGUSR1 prints every thread's stack
    (:func:`enable_stack_dumps`).
    """
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    # A closed terminal or ssh session (SIGHUP) would kill the run without its clean-up, leaving its
    # workers and queues behind; under nohup SIGHUP is ignored, and stays so. A server keeps SIGHUP's
    # own meaning (daemons reload on it; logrotate sends it), not a clean stop with exit 0.
    if not server and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        signal.signal(signal.SIGHUP, _sigterm_as_interrupt)
    # tqdm's monitor thread takes the bars' lock and is joined when the last bar closes: a Ctrl-C
    # landing in a bar's update just after the lock was taken would wedge that join (see am.interrupts).
    tqdm.monitor_interval = 0
    enable_stack_dumps()
    log = logging.getLogger(name)
    try:
        return main()
    except OptionError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except CleanupIncomplete as exc:  # the user insisted on quitting a clean-up: still an interrupted run
        log.error("%s", exc)
        return EXIT_INTERRUPTED
    except AmError as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    except OSError as exc:
        log.error("%s", describe_os_error(exc))
        log.debug("traceback of the error above", exc_info=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if server:
            log.info("stopped; cleaned up%s", f", {interrupted}" if interrupted else "")
            return EXIT_OK
        log.error("interrupted; cleaned up%s", f", {interrupted}" if interrupted else "")
        return EXIT_INTERRUPTED
