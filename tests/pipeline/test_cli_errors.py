"""The command-line edge (``am.cli.run_main``): file-system errors become one ERROR line naming
the file, the reason and what to do, with exit code 1 and the traceback kept at DEBUG level;
a refused option exits 2 like argparse's own errors.

The end-to-end cases run ``python -m am.pipeline`` as a real process on a dataset it cannot
write, refused before the backend starts: its folder or an output folder read-only (chmod for a
normal user; ``chattr +i`` for root, whom permissions do not stop) or a file standing where it
must make a folder.
"""

from __future__ import annotations

import errno
import faulthandler
import importlib
import io
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.harness import make_dataset, read_only

from am.cli import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RERUN_TO_RESUME,
    RERUN_TO_START_AGAIN,
    enable_stack_dumps,
    run_main,
)
from am.errors import CleanupIncomplete, ConfigError
from am.settings import OptionError
from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    """run_main installs its own SIGTERM handler; the test process gets its own back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def _raise(exc: BaseException):
    def main() -> int:
        raise exc
    return main


@pytest.mark.parametrize(("interrupted", "said"), [
    ("", "interrupted; cleaned up"),
    (RERUN_TO_RESUME, "interrupted; cleaned up, finished work is kept, rerun the same command to resume"),
    (RERUN_TO_START_AGAIN, "interrupted; cleaned up, earlier outputs are as they were and nothing of this run was "
                           "kept; rerun the same command to start again"),
])
def test_ctrl_c_says_what_the_command_left(caplog, interrupted, said):
    # Only the pipeline resumes; a command that starts again must not promise a resume.
    assert run_main(_raise(KeyboardInterrupt()), name="am.test", interrupted=interrupted) == EXIT_INTERRUPTED
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == said


def test_a_full_disk_is_one_error_line_naming_the_file_with_the_traceback_at_debug(caplog, tmp_path):
    target = tmp_path / "tiles" / "g1" / "source" / "0003.png"
    caplog.set_level(logging.DEBUG, logger="am.test")
    code = run_main(_raise(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))), name="am.test")
    assert code == EXIT_ERROR
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    message = errors[0].getMessage()
    assert str(target) in message and "No space left on device" in message and "free space" in message
    assert "\n" not in message
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 1 and debug[0].exc_info and isinstance(debug[0].exc_info[1], OSError)


def test_a_permission_error_names_both_files_and_the_folder_to_fix(caplog, tmp_path):
    missing = tmp_path / "ds" / "source_norm"
    exc = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(missing), None, str(tmp_path / "other"))
    assert run_main(_raise(exc), name="am.test") == EXIT_ERROR
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = record.getMessage()
    assert f"{missing} -> {tmp_path / 'other'}" in message and "Permission denied" in message
    # source_norm does not exist: the folder to fix is the nearest one that does.
    assert f"fix the permissions of {tmp_path}" in message


def test_a_refused_option_exits_2_and_a_config_error_exits_1(caplog):
    assert run_main(_raise(OptionError("setting workers = 0 is not allowed")), name="am.test") == EXIT_USAGE
    assert run_main(_raise(ConfigError("setting workers = 0 is not allowed")), name="am.test") == EXIT_ERROR
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == \
        ["setting workers = 0 is not allowed"] * 2


@pytest.mark.parametrize("how", ["read-only folder", "read-only output folder", "file in the way"])
def test_pipeline_on_a_dataset_it_cannot_write_exits_1_without_a_traceback(tmp_path, tiny_model, how):
    root = make_dataset(tmp_path / "ds", {"g1": (200, 200)})
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "am.pipeline", str(root), "--model", str(tiny_model), "--tile-size", "128",
           "--tile-overlap", "32", "--workers", "1", "--no-progress"]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    if how == "file in the way":
        (root / "source_norm").write_text("not a folder")
        done, reason, named = run(), "Not a directory", root / "source_norm"
    else:
        named = root if how == "read-only folder" else root / "tiles" / "g1"
        named.mkdir(parents=True, exist_ok=True)
        with read_only(named) as reason:
            done = run()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert str(named) in errors[0] and reason in errors[0] and "rerun the same command" in errors[0]
    assert not (root / "tiles" / "g1" / "meta.json").exists()
    # Refused before the backend and its workers start: nothing of the run was set up.
    assert "endpoint" not in done.stderr and "started worker" not in done.stderr, done.stderr


def test_a_rerun_goes_ahead_in_a_read_only_dataset_whose_output_folders_are_writable(tmp_path, tiny_model):
    # Only the folders a run writes into are checked: a finished dataset on a read-only top folder
    # (its outputs made writable) reruns as before.
    root = make_dataset(tmp_path / "ds", {"g1": (200, 200)})
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "am.pipeline", str(root), "--model", str(tiny_model), "--tile-size", "128",
           "--tile-overlap", "32", "--workers", "1", "--no-progress", "--no-register"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    with read_only(root):
        again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "nothing to segment" in again.stderr and " ERROR " not in again.stderr, again.stderr


def test_sigusr1_prints_every_threads_stack_and_the_command_goes_on():
    """``kill -USR1 <pid>`` on a command that seems stuck shows where each thread is, without stopping it."""
    script = ("import os, signal, threading\n"
              "from am.cli import run_main\n"
              "def main():\n"
              "    idle = threading.Event()\n"
              "    threading.Thread(target=idle.wait, name='idle', daemon=True).start()\n"
              "    os.kill(os.getpid(), signal.SIGUSR1)\n"
              "    print('went on')\n"
              "    return 0\n"
              "raise SystemExit(run_main(main, name='probe'))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "went on"
    assert "Current thread" in done.stderr and "in main" in done.stderr, done.stderr
    assert "in wait" in done.stderr, "the other thread's stack is missing:\n" + done.stderr


def test_stack_dumps_go_to_descriptor_2_when_stderr_is_not_a_file(capfd, monkeypatch):
    """Under a capture (or in a notebook) ``sys.stderr`` has no descriptor: run_main must still start."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    try:
        enable_stack_dumps()
        os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        faulthandler.unregister(signal.SIGUSR1)
    assert "in test_stack_dumps_go_to_descriptor_2_when_stderr_is_not_a_file" in capfd.readouterr().err


def test_a_clean_up_quit_by_a_third_ctrl_c_is_still_an_interrupted_run(caplog):
    left = CleanupIncomplete("quit during the clean-up of job j: left behind its results queue")
    assert run_main(_raise(left), name="am.test") == EXIT_INTERRUPTED
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == str(left)


def test_sighup_runs_the_clean_up_unless_it_is_ignored():
    hangup = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

        def hung_up() -> int:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)
            return 0

        assert run_main(hung_up, name="am.test") == EXIT_INTERRUPTED
        # Under nohup the run must survive a closed terminal, as nohup promises.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        assert run_main(_raise(KeyboardInterrupt()), name="am.test") == EXIT_INTERRUPTED
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, hangup)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_a_clean_up_is_counted_not_let_through(signum):
    # A closed terminal may send SIGHUP twice: the second must not cut the clean-up short.
    from am.cleanup import InterruptGuard
    from am.cli import _sigterm_as_interrupt

    previous = signal.getsignal(signum)
    signal.signal(signum, _sigterm_as_interrupt)
    guard = InterruptGuard("job-1")
    try:
        guard.install()
        guard.cleaning = True
        os.kill(os.getpid(), signum)
        time.sleep(0.05)
        assert guard.extra == 1
    finally:
        guard.uninstall()
        signal.signal(signum, previous)


def test_a_server_leaves_sighup_as_it_was():
    # Daemons reload on SIGHUP (logrotate sends it): a server must not take it for a clean stop.
    hangup = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        assert run_main(_raise(KeyboardInterrupt()), name="am.test", server=True) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, hangup)


@pytest.mark.parametrize("module", ["am.pipeline", "am.register"])
def test_a_missing_dataset_names_only_the_dataset_as_required(module, capsys):
    """The groups are optional: "required: dataset, groups" told the user otherwise."""
    main = importlib.import_module(f"{module}.__main__").main
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "the following arguments are required: " in err and "GROUP" not in err.split("required: ")[1]
    assert "groups" not in err.split("required: ")[1]


@pytest.mark.parametrize("failed, groups, kept", [
    (["a"], 2, "the masks and the other groups' ids are kept"),
    (["a", "b"], 2, "the masks are kept: look at"),
])
def test_the_registration_summary_speaks_of_other_groups_only_where_there_are_some(caplog, failed, groups, kept):
    from am.pipeline.__main__ import _registration_outcome

    with caplog.at_level(logging.ERROR):
        assert _registration_outcome(failed, groups) == EXIT_ERROR
    assert kept in caplog.text


def test_without_a_home_folder_the_cache_is_in_the_temporary_folder(monkeypatch, caplog, tmp_path):
    # HOME unset and no passwd entry (some containers): Path.home() raises, and the run ended in a traceback.
    pipeline_main = importlib.import_module("am.pipeline.__main__")

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        folder = pipeline_main._cache_dir()
    assert folder == tmp_path / f"am-segm-cache-{os.getuid()}" / "am-segm"
    assert any("no home folder is known" in r.getMessage() and "XDG_CACHE_HOME" in r.getMessage()
               for r in caplog.records)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "chosen"))
    assert pipeline_main._cache_dir() == tmp_path / "chosen" / "am-segm"


def test_the_temporary_cache_is_used_only_where_it_is_this_users_alone(monkeypatch, tmp_path):
    # Another user's folder of that name (or one others may write to) could plant a checkpoint.
    pipeline_main = importlib.import_module("am.pipeline.__main__")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    usual = tmp_path / f"am-segm-cache-{os.getuid()}"
    assert pipeline_main._private_temporary_cache() == usual
    assert usual.stat().st_mode & 0o777 == 0o700
    usual.chmod(0o777)
    elsewhere = pipeline_main._private_temporary_cache()
    assert elsewhere != usual and elsewhere.parent == tmp_path and elsewhere.stat().st_mode & 0o077 == 0
    usual.rmdir()
    usual.symlink_to(elsewhere)
    assert pipeline_main._private_temporary_cache() not in (usual, elsewhere)
