"""Ctrl-C before run_main has taken over (while ``python -m am.train``, ``am.evaluate`` or ``am.pseudolabel``
loads its modules or parses its options) ends the command with exit code 130 and one line, as a later one
does, not a traceback."""

from __future__ import annotations

import importlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import am.startup
from am.cli import EXIT_INTERRUPTED, RERUN_TO_START_AGAIN
from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]
NOTHING_DONE = "nothing was done, rerun the same command"

# Runs ``python -m <command>`` as runpy does, with SIGINT raised at the first look-up of the module named in
# argv[2] (a module the command imports while starting), for "parse" as the options are parsed, or for
# "definitions" as the first statement after the imports runs: argv[3] names the function it calls and
# argv[4] the first argument it passes (am.train's and am.evaluate's logger; am.pseudolabel's first regex).
DRIVER = """
import argparse, logging, re, runpy, signal, sys

command, where, hook, first = sys.argv[1:5]
# As in a terminal: a test run started in the background (nohup, CI) passes SIGINT on ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == where:  # once, as one Ctrl-C: the command may look the module up again while it reports it
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
        return None

def parse(*args, **kwargs):
    signal.raise_signal(signal.SIGINT)

owner, attribute = hook.split(".")
original = getattr(sys.modules[owner], attribute)

def interrupting(name, *args, **kwargs):
    if name == first:
        setattr(sys.modules[owner], attribute, original)
        signal.raise_signal(signal.SIGINT)
    return original(name, *args, **kwargs)

if where == "parse":  # all three parse with parse_args (am.pipeline: parse_intermixed_args)
    argparse.ArgumentParser.parse_args = parse
elif where == "definitions":
    setattr(sys.modules[owner], attribute, interrupting)
else:
    sys.meta_path.insert(0, Interrupt())
sys.argv = [command, *sys.argv[5:]]
runpy.run_module(command, run_name="__main__", alter_sys=True)
"""

# Per command: the arguments of a run that would start real work (cheaply: the Ctrl-C comes before it), the
# first statement after its imports, what a Ctrl-C during its option parsing leaves (what its run_main says), and
# modules its __main__ loads while it starts (runpy imports the package before __main__ runs, out of that
# module's reach: am.pseudolabel's __init__ loads torch only on first use for that reason). am.startup: a Ctrl-C
# while it loads is reported too.
# numpy.f2py: looked up inside scipy's exec("from numpy import *"), which marks a Ctrl-C unhandled for good.
COMMANDS = {
    "am.train": (lambda tmp: ["--out", str(tmp / "m.pt"), "--synthetic", "2"],
                 ("logging.getLogger", "am.train"), NOTHING_DONE,
                 ("shlex", "am.startup", "torch", "am.cli", "numpy.f2py", "am.train.loop")),
    "am.evaluate": (lambda tmp: ["--synthetic", "1", "--size", "64"],
                    ("logging.getLogger", "__main__"), RERUN_TO_START_AGAIN,
                    ("json", "am.startup", "torch", "am.cli", "numpy.f2py", "am.model.predict")),
    "am.pseudolabel": (lambda tmp: [str(tmp / "big.png"), "--labels", str(tmp / "labels"), "--out", str(tmp / "out")],
                       ("re.compile", r"^(\d+)_(\d+)$"), RERUN_TO_START_AGAIN,
                       ("am.startup", "torch", "am.cli", "am.pseudolabel.core", "am.train.progress")),
}


def _interrupted_at(command: str, where: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Run with -m, as the command is: CPython ends a -m run by SIGINT where a Ctrl-C was marked unhandled.
    arguments, (hook, first), _, _ = COMMANDS[command]
    (tmp_path / "driver").mkdir(exist_ok=True)
    (tmp_path / "driver" / "interrupting_driver.py").write_text(DRIVER)
    return subprocess.run([sys.executable, "-m", "interrupting_driver", command, where, hook, first,
                           *arguments(tmp_path)], cwd=REPO,
                          env=clean_env(PYTHONPATH=f"{tmp_path / 'driver'}:{REPO}"), capture_output=True, text=True,
                          timeout=120)


def _line(command: str, outcome: str) -> str:
    return rf"\d\d:\d\d:\d\d ERROR {re.escape(command)}: interrupted; {re.escape(outcome)}\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_while_the_modules_load_exits_130_with_one_line(command: str, tmp_path: Path) -> None:
    for module in COMMANDS[command][3]:
        done = _interrupted_at(command, module, tmp_path)
        assert done.returncode == EXIT_INTERRUPTED, (module, done.returncode, done.stderr)
        assert re.fullmatch(_line(command, NOTHING_DONE), done.stderr), (module, done.stderr)
        assert done.stdout == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_while_the_options_are_parsed_exits_130_with_one_line(command: str, tmp_path: Path) -> None:
    done = _interrupted_at(command, "parse", tmp_path)
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert re.fullmatch(_line(command, COMMANDS[command][2]), done.stderr), done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_between_the_imports_and_the_options_exits_130_with_one_line(command: str, tmp_path: Path) -> None:
    # While the module's functions are defined: held until main() runs, then handled as during the parse.
    done = _interrupted_at(command, "definitions", tmp_path)
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert re.fullmatch(_line(command, COMMANDS[command][2]), done.stderr), done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_importing_a_command_leaves_ctrl_c_to_the_program(command: str) -> None:
    # Only a command run as __main__ holds SIGINT while it starts; a test or program importing it keeps Ctrl-C.
    importlib.import_module(f"{command}.__main__")
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_the_early_exit_code_is_the_command_lines() -> None:
    assert am.startup.EXIT_INTERRUPTED == EXIT_INTERRUPTED
