"""Ctrl-C while ``python -m am.register``, ``am.synth``, ``am.api``, ``am.serve``, ``am.bench``, ``am.scale``,
``am.model`` or ``am.train.mine`` loads its modules (before run_main has taken over) ends the command with exit
code 130 and one line, not a traceback; ``am.worker``, for which a first SIGINT is a clean stop, exits 0 with one line.

The technique and the driver are tests/model/test_early_interrupt_commands.py's: SIGINT raised at the first
look-up of a module the command's ``__main__`` imports, or as its options are parsed. PRELUDE adds what these
commands need: their parsers also use parse_intermixed_args (which goes through parse_known_args, not
parse_args), and a few run no statement of their own between the imports and run_command, so "held" raises
SIGINT right after the imports have held it (am.startup.hold_ctrl_c), to be delivered once main() runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from am.cli import EXIT_INTERRUPTED, EXIT_OK
from tests.environment import clean_env
from tests.model.test_early_interrupt_commands import DRIVER, NOTHING_DONE, REPO, _line

PRELUDE = """
import argparse, signal, sys

def _interrupt(*args, **kwargs):
    signal.raise_signal(signal.SIGINT)

if sys.argv[2] == "parse":
    argparse.ArgumentParser.parse_known_args = _interrupt
elif sys.argv[2] == "held":
    import am.startup

    _hold = am.startup.hold_ctrl_c

    def _holding():
        _hold()
        signal.raise_signal(signal.SIGINT)  # held: it comes once main() runs

    am.startup.hold_ctrl_c = _holding
"""

# The driver's hook for "definitions", which these tests leave out: it is looked up, never called.
UNUSED_HOOK = ("logging.getLogger", "-")

# Per command: the arguments of a run that would start real work (cheaply: the Ctrl-C comes before it), and the
# modules its __main__ loads while it starts (runpy imports the package before __main__ runs, and the package loads
# its modules only on first use: see PACKAGE_MODULES). "parse": whether the options are parsed before run_main takes
# Ctrl-C over (am.bench and am.model parse inside run_main, which reports a Ctrl-C there itself).
COMMANDS: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...], bool]] = {
    "am.register": (lambda tmp: [str(tmp / "dataset")], ("am.startup", "am.cli", "tqdm", "am.dataset_lock"), True),
    "am.synth": (lambda tmp: ["tiles", str(tmp / "tiles"), "--count", "1", "--size", "64"],
                 ("am.startup", "numpy", "cv2", "tqdm", "am.cli", "am.synth.render"), True),
    "am.api": (lambda tmp: ["--port", "0", "--data-dir", str(tmp / "api")], ("am.startup", "am.model_source"), True),
    "am.serve": (lambda tmp: ["serve", "--model-dir", str(tmp), "--port", "0"], ("am.startup",), True),
    "am.bench": (lambda tmp: ["--device", "cpu", "--tiles", "1"], ("am.startup",), False),
    "am.scale": (lambda tmp: ["--stack", "am-segm", "status"], ("am.startup", "am.cli", "tqdm"), True),
    "am.model": (lambda tmp: [str(tmp / "model.pt")], ("am.startup",), False),
    "am.train.mine": (lambda tmp: ["--out", str(tmp / "hard"), "--count", "1", "--keep", "1"],
                      ("am.startup", "numpy", "am.cli", "am.model.predict"), True),
}
WORKER_MODULES = ("am.startup", "cv2", "am.transport.clients", "am.worker.worker")
WORKER_LINE = (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO am\.worker \[\d+\] "
               r"stopped while starting; nothing was received\n")

# A module each package exports names of. runpy imports the package before the command's __main__ runs, out of its
# reach: the package loads its modules on first use (am.lazy), inside __main__'s start-up or later.
PACKAGE_MODULES = {
    "am.register": "am.register.dataset",
    "am.api": "am.api.app",
    "am.serve": "am.serve.app",
    "am.bench": "am.bench.loop",
    "am.scale": "am.scale.control",
    "am.model": "am.model.build",
    "am.worker": "am.worker.batch",
    "am.evaluate": "am.evaluate.metrics",
}


def _interrupted_at(command: str, where: str, arguments: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Run with -m, as the command is: CPython ends a -m run by SIGINT where a Ctrl-C was marked unhandled.
    (tmp_path / "driver").mkdir(exist_ok=True)
    (tmp_path / "driver" / "interrupting_driver.py").write_text(PRELUDE + DRIVER)
    return subprocess.run([sys.executable, "-m", "interrupting_driver", command, where, *UNUSED_HOOK, *arguments],
                          cwd=REPO, env=clean_env(PYTHONPATH=f"{tmp_path / 'driver'}:{REPO}"), capture_output=True,
                          text=True, timeout=120)


def _command_interrupted_at(command: str, where: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return _interrupted_at(command, where, COMMANDS[command][0](tmp_path), tmp_path)


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_while_the_modules_load_exits_130_with_one_line(command: str, tmp_path: Path) -> None:
    for module in COMMANDS[command][1]:
        done = _command_interrupted_at(command, module, tmp_path)
        assert done.returncode == EXIT_INTERRUPTED, (module, done.returncode, done.stderr)
        assert re.fullmatch(_line(command, NOTHING_DONE), done.stderr), (module, done.stderr)
        assert done.stdout == ""


@pytest.mark.parametrize("command", [command for command, (_, _, parse) in COMMANDS.items() if parse])
def test_ctrl_c_while_the_options_are_parsed_exits_130_with_one_line(command: str, tmp_path: Path) -> None:
    done = _command_interrupted_at(command, "parse", tmp_path)
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert re.fullmatch(_line(command, NOTHING_DONE), done.stderr), done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_between_the_imports_and_main_exits_130_with_one_line(command: str, tmp_path: Path) -> None:
    # While the module's functions are defined: held until main() runs, then reported by run_command.
    done = _command_interrupted_at(command, "held", tmp_path)
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert re.fullmatch(_line(command, NOTHING_DONE), done.stderr), done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("where", [*WORKER_MODULES, "held", "parse"])
def test_a_worker_stopped_while_it_starts_exits_0_with_one_line(where: str, tmp_path: Path) -> None:
    # Its settings are not read yet (none are set here): the stop comes first, and nothing was received.
    done = _interrupted_at("am.worker", where, [], tmp_path)
    assert done.returncode == EXIT_OK, (where, done.returncode, done.stderr)
    assert re.fullmatch(WORKER_LINE, done.stderr), (where, done.stderr)
    assert done.stdout == ""


@pytest.mark.parametrize("package", PACKAGE_MODULES)
def test_a_package_loads_its_modules_on_first_use(package: str) -> None:
    # In a fresh interpreter: importing the package loads none of its modules, nor numpy, OpenCV or torch, and each
    # exported name still resolves.
    code = (f"import sys, {package} as p\n"
            f"loaded = {{{PACKAGE_MODULES[package]!r}, 'numpy', 'cv2', 'torch'}} & set(sys.modules)\n"
            "assert not loaded, loaded\n"
            "missing = [name for name in p.__all__ if getattr(p, name) is None]\n"
            "assert not missing, missing\n"
            "assert set(p.__all__) <= set(dir(p))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", [*COMMANDS, "am.worker"])
def test_importing_a_command_leaves_ctrl_c_to_the_program(command: str) -> None:
    # Only a command run as __main__ holds SIGINT while it starts; a test or program importing it keeps Ctrl-C.
    package = importlib.util.find_spec(command).submodule_search_locations is not None
    module = importlib.import_module(f"{command}.__main__" if package else command)
    assert callable(module.main)
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
