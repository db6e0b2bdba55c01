"""Make a GPU lease's packages and real samples ready on this machine before the lease starts.

A lent GPU machine (its own Python 3.12 with PyTorch, timm and OpenCV) cannot reach PyPI and gets
only the checkout and the paths a call carries, while its minutes count from the first call. So what
`benchmarks/gpu_train.sh` needs is put here, in two git-ignored folders that travel with the call:

- ``.whl/``: wheels, for the device's Python, of the packages it lacks, at the versions this Python
  has installed (the project's venv under ``make gpu-prep``), so the GPU runs the code the tests ran;
  wheels of other versions of those packages are removed (two versions of one package stop the
  device's install);
- ``.real/``: a copy of the real samples, which stay outside the repository.

It ends by printing the one device call that uses them, which brings back the run's results in the
few small files a call returns (gpu_train.sh's RESULTS)::

    make gpu-prep                                   # or: python benchmarks/gpu_prep.py
    python benchmarks/gpu_prep.py --dry-run         # what it would fetch and copy; writes nothing
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from am.evaluate.real import SAMPLE_FILES

REPO = Path(__file__).resolve().parents[1]
# Where gpu_train.sh looks for wheels unless WHEELS names another folder.
DEFAULT_WHEELS = ".whl"

# What `am.train`, `am.evaluate` and `am.bench` import that the device's image does not hold (it has
# torch, torchvision, timm, huggingface-hub, safetensors, numpy, opencv-python-headless, pyyaml, tqdm,
# python-dateutil and urllib3, which these need in turn).
MISSING_ON_DEVICE = ("segmentation-models-pytorch", "boto3", "botocore", "s3transfer", "jmespath", "tenacity")
DEVICE_PYTHON = "3.12"
# pip matches a manylinux tag exactly, so every tag the device accepts is named; the packages above
# are pure Python (py3-none-any) today, and these keep a future compiled release fetchable.
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64", "manylinux1_x86_64")
# The files gpu_train.sh measures (through am.evaluate.real); a folder without them is not the real samples.
REAL_FILES = SAMPLE_FILES
# What one device call may carry, working tree included (the device tool's limit).
CARRY_LIMIT_BYTES = 64 * 2**20
# The device tool's limits on a call: its command's length, and its wall clock. The script's own
# deadline leaves 20 s of it for starting and for the results to be packed.
COMMAND_LIMIT_CHARS = 2000
CALL_TIMEOUT_S = 590
DEADLINE_S = 570


class PrepError(Exception):
    """Something to fix here before a lease: the message says what and how."""


def normalise(name: str) -> str:
    """A project name as wheel file names spell it (PEP 503 folded, then ``-`` as ``_``)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The version of each package in this Python: the one the tests ran with."""
    versions, absent = {}, []
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            absent.append(name)
    if absent:
        raise PrepError(f"{', '.join(absent)} not installed in {sys.executable}: run `make gpu-prep` "
                        "(it uses the project's venv, built by `make install`)")
    return versions


def wheel_versions(folder: Path) -> list[tuple[Path, str, str]]:
    """``(wheel, normalised project name, version)`` of each wheel in ``folder``, read from its file name."""
    found = []
    for wheel in sorted(folder.glob("*.whl")):
        name, _, rest = wheel.name.partition("-")
        found.append((wheel, normalise(name), rest.split("-", 1)[0]))
    return found


def stale_wheels(folder: Path, versions: dict[str, str]) -> list[Path]:
    """Wheels in ``folder`` of a wanted package at another version than wanted."""
    wanted = {normalise(name): version for name, version in versions.items()}
    return [wheel for wheel, name, version in wheel_versions(folder) if name in wanted and version != wanted[name]]


def present_wheels(folder: Path, versions: dict[str, str]) -> set[str]:
    """The wanted packages whose wanted version already lies in ``folder``."""
    names = {normalise(name): name for name in versions}
    return {names[name] for _, name, version in wheel_versions(folder)
            if name in names and version == versions[names[name]]}


def download_command(folder: Path, requirements: list[str], *, python_version: str = DEVICE_PYTHON) -> list[str]:
    """pip's command for wheels of exactly ``requirements`` (no dependencies) for the device's Python."""
    platforms = [arg for platform in DEVICE_PLATFORMS for arg in ("--platform", platform)]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
            "--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(folder),
            *requirements]


def check_real(source: Path) -> None:
    """Stop before anything is copied when ``source`` is not the real samples' folder."""
    if not source.is_dir():
        raise PrepError(f"real samples not found at {source}: name their folder with --real-from, "
                        "or pass --skip-real (the GPU script then needs SKIP_REAL=1)")
    absent = [name for name in REAL_FILES if not (source / name).is_file()]
    if absent:
        raise PrepError(f"{source} lacks {', '.join(absent)}: is it the real samples' folder (see its README)?")


def copy_real(source: Path, target: Path) -> int:
    """Copy the real samples' files to ``target`` whole or not at all; returns the bytes copied.

    The copy is made beside ``target`` and renamed into place, so an interrupted copy never leaves a
    ``.real/`` that gpu_train.sh would take for complete. Files arrive writable, whatever the source's
    modes, so the next prep can replace them.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)
    try:
        copied = 0
        for name in (*REAL_FILES, "README.md"):
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
                copied += (staging / name).stat().st_size
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return copied


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def device_call(*, wheels: str, real: str | None) -> str:
    """The call that runs the prepared check on a lent machine, carrying the folders named (paths
    relative to the repository root, as the call carries them; ``real`` None: without the real
    samples).

    Its reply brings back only a few small files of the device's ``$OUT``, so the script works in a
    folder of its own (checkpoints and resume states run to hundreds of MB) and packs its results
    into ``$OUT`` (RESULTS: compact.pt, comparison.md, bench.json and results.tgz of the figures and
    logs); DEADLINE_S ends it, bench included, inside the call's timeout.
    """
    samples = "SKIP_REAL=1" if real is None else f"REAL={shlex.quote(real)}"
    # gpu_train.sh installs from WHEELS, .whl by default.
    where = "" if wheels == DEFAULT_WHEELS else f"WHEELS={shlex.quote(wheels)} "
    command = (f"MINUTES=4 OUT=/tmp/gpu-run RESULTS=$OUT {where}{samples} PYTHON=python3 DEADLINE_S={DEADLINE_S} "
               "BENCH_TIMEOUT_S=200 bash benchmarks/gpu_train.sh")
    if len(command) >= COMMAND_LIMIT_CHARS:
        raise PrepError(f"the device call's command would be {len(command)} characters, over the "
                        f"{COMMAND_LIMIT_CHARS} a call takes: give the folders shorter names")
    carry = [wheels] if real is None else [wheels, real]
    return f'run(command="{command}", carry={carry!r}, timeout_s={CALL_TIMEOUT_S})'


def in_repository(path: Path) -> str | None:
    """``path`` relative to the repository root, or None where it lies outside it (or is the root).

    The device call carries only paths inside the checkout, named from its root; a folder elsewhere
    would not travel, and its name alone would point at nothing there.
    """
    resolved, root = path.resolve(), REPO.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        return None
    return resolved.relative_to(root).as_posix()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, default=REPO / DEFAULT_WHEELS,
                        help=f"folder for the wheels, inside the repository (default {DEFAULT_WHEELS}/)")
    parser.add_argument("--real-from", type=Path, default=REPO.parent / "shared" / "data" / "real",
                        help="the real samples (default ../shared/data/real)")
    parser.add_argument("--real-to", type=Path, default=REPO / ".real",
                        help="their copy, inside the repository (default .real/)")
    parser.add_argument("--skip-real", action="store_true", help="copy no real samples")
    parser.add_argument("--python-version", default=DEVICE_PYTHON,
                        help=f"the device's Python, as pip's --python-version (default {DEVICE_PYTHON})")
    parser.add_argument("--dry-run", action="store_true", help="say what would be fetched and copied; write nothing")
    args = parser.parse_args(argv)
    folders = (("--wheels", args.wheels),) if args.skip_real else (("--wheels", args.wheels),
                                                                   ("--real-to", args.real_to))
    for option, folder in folders:
        if in_repository(folder) is None:
            parser.error(f"{option} {folder} is not inside the repository ({REPO}): a device call carries only "
                         f"folders of the checkout; give one under it (git-ignored, as .whl/ and .real/ are)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        versions = installed_versions(MISSING_ON_DEVICE)
        if not args.skip_real:
            check_real(args.real_from)
    except PrepError as error:
        print(f"gpu_prep: {error}", file=sys.stderr)
        return 2
    stale = stale_wheels(args.wheels, versions)
    present = present_wheels(args.wheels, versions)
    needed = [f"{name}=={version}" for name, version in versions.items() if name not in present]
    print("packages for the device: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    if args.dry_run:
        for wheel in stale:
            print(f"would remove {wheel} (another version)")
        print("would run: " + " ".join(download_command(args.wheels, needed, python_version=args.python_version))
              if needed else f"wheels already in {args.wheels}")
        if not args.skip_real:
            print(f"would copy the real samples from {args.real_from} to {args.real_to}")
        return 0
    for wheel in stale:
        wheel.unlink()
        print(f"removed {wheel.name} (another version)")
    if needed:
        args.wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(download_command(args.wheels, needed, python_version=args.python_version), check=True)
    still_missing = sorted(set(versions) - present_wheels(args.wheels, versions))
    if still_missing:
        print(f"gpu_prep: pip left no wheel of {', '.join(still_missing)} in {args.wheels}", file=sys.stderr)
        return 1
    if not args.skip_real:
        copied = copy_real(args.real_from, args.real_to)
        print(f"copied {copied / 1024:.0f} KiB of real samples to {args.real_to}")
    total = folder_bytes(args.wheels) + (0 if args.skip_real else folder_bytes(args.real_to))
    print(f"to carry: {total / 2**20:.1f} MiB of the {CARRY_LIMIT_BYTES // 2**20} MiB a device call takes "
          "(with the working tree)")
    if total > CARRY_LIMIT_BYTES:
        print(f"gpu_prep: {total / 2**20:.1f} MiB is over the carry limit: empty {args.wheels} of wheels not listed "
              "above", file=sys.stderr)
        return 1
    real = None if args.skip_real else in_repository(args.real_to)
    try:
        call = device_call(wheels=in_repository(args.wheels), real=real)
    except PrepError as error:
        print(f"gpu_prep: {error}", file=sys.stderr)
        return 1
    print("on a lent GPU machine, from the repository root:\n  " + call)
    return 0


if __name__ == "__main__":
    sys.exit(main())
