"""Ctrl-C before run_main has taken over (while ``python -m am.pipeline`` loads its modules or parses its
options) ends the command with exit code 130 and one line, as a later one does, not a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import am.startup as startup
from am.cli import EXIT_INTERRUPTED
from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]
LINE = r"\d\d:\d\d:\d\d ERROR am\.pipeline: interrupted; "

# Runs ``python -m am.pipeline`` as runpy does, with SIGINT raised at the first look-up of the module
# named in argv[1] (a module the command imports while starting), for "parse" as the options are parsed, or
# for "definitions" as the first statement after the imports runs (the logger it makes).
DRIVER = """
import argparse, logging, runpy, signal, sys

where = sys.argv[1]
# As in a terminal: a test run started in the background (nohup, CI) passes SIGINT on ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == where:
            signal.raise_signal(signal.SIGINT)
        return None

def parse(*args, **kwargs):
    signal.raise_signal(signal.SIGINT)

get_logger = logging.getLogger

def interrupting_get_logger(name=None):
    if name == "am.pipeline":
        logging.getLogger = get_logger
        signal.raise_signal(signal.SIGINT)
    return get_logger(name)

if where == "parse":
    argparse.ArgumentParser.parse_intermixed_args = parse
elif where == "definitions":
    logging.getLogger = interrupting_get_logger
else:
    sys.meta_path.insert(0, Interrupt())
sys.argv = ["am.pipeline", sys.argv[2]]
runpy.run_module("am.pipeline", run_name="__main__", alter_sys=True)
"""


def _interrupted_at(where: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Run with -m, as the command is: CPython ends a -m run by SIGINT where a Ctrl-C was marked unhandled.
    (tmp_path / "driver").mkdir(exist_ok=True)
    (tmp_path / "driver" / "interrupting_driver.py").write_text(DRIVER)
    return subprocess.run([sys.executable, "-m", "interrupting_driver", where, str(tmp_path / "dataset")], cwd=REPO,
                          env=clean_env(PYTHONPATH=f"{tmp_path / 'driver'}:{REPO}"), capture_output=True, text=True,
                          timeout=120)


def test_ctrl_c_while_the_modules_load_exits_130_with_one_line(tmp_path: Path) -> None:
    # numpy.f2py: looked up inside scipy's exec("from numpy import *"), which marks a Ctrl-C unhandled for good.
    # tempfile: the first module the command imports that the interpreter has not loaded already.
    for module in ("tempfile", "am.cli", "am.pitch", "numpy.f2py"):
        done = _interrupted_at(module, tmp_path)
        assert done.returncode == EXIT_INTERRUPTED, (module, done.returncode, done.stderr)
        assert re.fullmatch(LINE + r"nothing was done, rerun the same command\n", done.stderr), done.stderr
        assert done.stdout == ""


def test_ctrl_c_while_the_options_are_parsed_exits_130_with_one_line(tmp_path: Path) -> None:
    done = _interrupted_at("parse", tmp_path)
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert re.fullmatch(LINE + r"finished work is kept, rerun the same command to resume\n", done.stderr), done.stderr


def test_ctrl_c_between_the_imports_and_the_options_exits_130_with_one_line(tmp_path: Path) -> None:
    # While the module's functions are defined: held until main() runs, then handled as during the parse.
    done = _interrupted_at("definitions", tmp_path)
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert re.fullmatch(LINE + r"finished work is kept, rerun the same command to resume\n", done.stderr), done.stderr


def test_the_early_exit_code_is_the_command_lines():
    assert startup.EXIT_INTERRUPTED == EXIT_INTERRUPTED
