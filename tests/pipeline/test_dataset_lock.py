"""One run at a time per dataset: a second am.pipeline or am.register is refused, naming the first."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from faults.harness import make_dataset, read_only

from am.dataset_lock import LOCK_NAME, dataset_lock
from am.errors import InputError
from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]


def _run(module: str, dataset: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, str(dataset), "--rows", "4", "--cols", "4"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


def _holder(dataset: Path, *, command: str, seconds: float) -> subprocess.Popen:
    """Another process holding ``dataset``'s lock for ``seconds``; returns once it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from am.dataset_lock import dataset_lock; "
                               "cm = dataset_lock(sys.argv[2], command=sys.argv[3]); cm.__enter__(); "
                               "print('held', flush=True); time.sleep(float(sys.argv[4]))",
                               str(REPO), str(dataset), command, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("module", ["am.pipeline", "am.register"])
def test_a_second_run_on_a_dataset_in_use_is_refused_before_it_changes_anything(tmp_path, module):
    dataset = make_dataset(tmp_path / "ds", {"g": (200, 200)})
    before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    with dataset_lock(dataset, command="am.pipeline"):
        result = _run(module, dataset, tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"dataset {dataset} is in use by another run (am.pipeline, pid {os.getpid()} on " in result.stderr
    assert "wait for it to end, or stop it, then rerun" in result.stderr
    assert "endpoint listening" not in result.stderr
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == sorted([*before, Path(LOCK_NAME)])


def test_the_lock_goes_with_the_run_that_held_it(tmp_path):
    with dataset_lock(tmp_path, command="first"), \
            pytest.raises(InputError, match=r"in use by another run \(first, pid"), \
            dataset_lock(tmp_path, command="second"):
        pytest.fail("two holders at once")
    with dataset_lock(tmp_path, command="third"):
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"third, pid {os.getpid()} on ")
    # A holder killed outright leaves no lock behind: the kernel drops it with the process.
    holder = _holder(tmp_path, command="killed", seconds=60)
    try:
        with pytest.raises(InputError, match="killed, pid"), dataset_lock(tmp_path, command="x"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with dataset_lock(tmp_path, command="after"):
        pass


@pytest.mark.parametrize("lock_file", ["there", "absent"])
def test_a_run_that_cannot_write_the_dataset_still_takes_the_lock(tmp_path, lock_file):
    # A shared dataset another user made, or a read-only root whose output folders are writable:
    # a lock needs no write access, and two such runs must still exclude each other.
    if lock_file == "there":
        with dataset_lock(tmp_path, command="earlier"):
            pass
    with read_only(tmp_path), dataset_lock(tmp_path, command="first"), \
            pytest.raises(InputError, match="is in use by another run"), dataset_lock(tmp_path, command="second"):
        pytest.fail("two holders at once")


def test_a_run_told_to_wait_takes_the_lock_once_the_holder_ends(tmp_path, caplog):
    # The task server's restarted run, while the run its previous life started still cleans up.
    holder = _holder(tmp_path, command="cleaning up", seconds=1.5)
    try:
        with pytest.raises(InputError, match=r"in use by another run \(cleaning up, pid .*\) \(waited 0.2 s\)"), \
                dataset_lock(tmp_path, command="impatient", wait_s=0.2):
            pytest.fail("taken while held")
        caplog.set_level("INFO", logger="am.dataset_lock")
        with dataset_lock(tmp_path, command="patient", wait_s=30):
            assert holder.poll() is not None, "taken before the holder ended"
        assert [r.getMessage() for r in caplog.records if "waiting up to 30 s" in r.getMessage()][:1]
    finally:
        holder.kill()
        holder.wait()


def _dead_pid() -> int:
    """The id of a process that has ended (and that no process reuses this soon)."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(ended.stdout)


@pytest.mark.parametrize("record", ["absent", "stale"])
def test_a_run_that_cannot_write_and_one_that_can_exclude_each_other(tmp_path, record):
    # Both lock the same thing, the folder, whatever each may write; and a record the holder could not
    # replace (a killed earlier run's) is not taken for the holder.
    if record == "stale":
        (tmp_path / LOCK_NAME).write_text(f"am.pipeline, pid {_dead_pid()} on {socket.gethostname()}, "
                                          "since 2020-01-01 00:00:00\n")
    held = dataset_lock(tmp_path, command="read-only run")
    with ExitStack() as unwritable:
        unwritable.enter_context(read_only(tmp_path))
        if record == "stale":
            unwritable.enter_context(read_only(tmp_path / LOCK_NAME))
        held.__enter__()
    try:
        with pytest.raises(InputError, match=r"is in use by another run \(holder not recorded\)"), \
                dataset_lock(tmp_path, command="writing run"):
            pytest.fail("two holders at once")
    finally:
        held.__exit__(None, None, None)


def test_deleting_the_record_does_not_let_a_second_run_in(tmp_path):
    with dataset_lock(tmp_path, command="first"):
        (tmp_path / LOCK_NAME).unlink()
        with pytest.raises(InputError, match="is in use by another run"), dataset_lock(tmp_path, command="second"):
            pytest.fail("two holders at once")


def test_the_record_is_cleared_when_the_lock_goes(tmp_path):
    with dataset_lock(tmp_path, command="first"):
        assert (tmp_path / LOCK_NAME).read_text().startswith("first, pid ")
    assert (tmp_path / LOCK_NAME).read_text() == ""


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_the_record_is_never_written_through_a_link_or_into_a_non_file(tmp_path, kind, caplog):
    dataset = tmp_path / "ds"
    dataset.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    if kind == "symlink":
        (dataset / LOCK_NAME).symlink_to(victim)
    else:
        os.mkfifo(dataset / LOCK_NAME)
    with dataset_lock(dataset, command="first"), \
            pytest.raises(InputError, match="is in use by another run"), dataset_lock(dataset, command="second"):
        pytest.fail("two holders at once")
    assert victim.read_text() == "precious\n"
    assert any(LOCK_NAME in r.getMessage() and "remove" in r.getMessage() for r in caplog.records)


def test_where_folders_cannot_be_locked_the_record_file_is_locked_and_a_refusal_keeps_its_text(tmp_path, monkeypatch):
    """NFS locks only files opened for writing: the runs lock the record file instead, and a run refused
    there leaves the holder's record as it was."""
    real_flock = fcntl.flock

    def no_folder_locks(descriptor: int, operation: int) -> None:
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        real_flock(descriptor, operation)

    monkeypatch.setattr("am.dataset_lock.fcntl.flock", no_folder_locks)
    dataset = tmp_path / "ds"
    dataset.mkdir()
    with dataset_lock(dataset, command="first"):
        recorded = (dataset / LOCK_NAME).read_text()
        assert recorded.startswith(f"first, pid {os.getpid()} on {socket.gethostname()}")
        with pytest.raises(InputError, match=r"is in use by another run \(first, pid "), \
                dataset_lock(dataset, command="second"):
            pytest.fail("a second run took the lock")
        assert (dataset / LOCK_NAME).read_text() == recorded
    assert (dataset / LOCK_NAME).read_text() == ""
    with dataset_lock(dataset, command="third"):  # let go: the next run takes it
        assert (dataset / LOCK_NAME).read_text().startswith("third, pid ")
