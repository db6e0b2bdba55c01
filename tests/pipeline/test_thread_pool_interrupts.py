"""Ctrl-C while the main thread works a thread pool (``am.interrupts``): handled soon, and no lock left held.

A KeyboardInterrupt raised right after the main thread took a lock that a pool thread needs, and
before the ``with`` that would give it back, wedges that thread for good, and every join of it
(the pool's shutdown, the interpreter's exit) with it. The signal is raised here exactly there,
from inside a future's lock acquisition, as an unlucky Ctrl-C lands.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from am.interrupts import ThreadPool, deferred_interrupts, result_of, wait_for


@pytest.fixture(autouse=True)
def _handlers_back() -> Iterator[None]:
    """Every test leaves SIGINT and SIGTERM as it found them, whatever it asserted."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


class SignallingCondition(threading.Condition):
    """A future's lock whose next acquisition is followed by a SIGINT, before the caller can protect it."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True
        self._take = self.acquire
        self.acquire = self._take_then_signal

    def _take_then_signal(self, *args: object) -> bool:
        taken = self._take(*args)
        if self.armed:
            self.armed = False
            signal.raise_signal(signal.SIGINT)
        return taken


def test_ctrl_c_inside_the_block_is_handled_as_it_is_left_and_the_handler_is_back():
    reached_the_end = False
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        reached_the_end = True
    assert reached_the_end, "the interrupt cut the block short"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nested_blocks_hold_the_interrupt_until_the_outer_one_ends():
    steps = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
        steps.append("after the inner block")
    assert steps == ["after the inner block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_every_recorded_signal_reaches_its_handler_in_order_and_the_last_error_is_raised():
    seen: list[int] = []

    def counting(signum: int, frame: object) -> None:
        seen.append(signum)
        if len(seen) == 1:
            raise KeyboardInterrupt("first")
        if len(seen) == 3:
            raise RuntimeError("third")

    signal.signal(signal.SIGINT, counting)
    signal.signal(signal.SIGTERM, counting)
    with pytest.raises(RuntimeError, match="third"), deferred_interrupts():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
    assert seen == [signal.SIGINT, signal.SIGINT, signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is counting and signal.getsignal(signal.SIGTERM) is counting


def test_an_ignored_signal_stays_ignored_and_other_threads_change_nothing():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with deferred_interrupts():
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        signal.raise_signal(signal.SIGTERM)
    seen = []

    def off_main() -> None:
        with deferred_interrupts():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=off_main)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


def test_ctrl_c_as_wait_takes_a_futures_lock_leaves_the_lock_free_for_the_pool_thread():
    release = threading.Event()
    with ThreadPool(1, thread_name_prefix="test-wedge") as pool:
        future = pool.submit(release.wait, 10)
        future._condition = SignallingCondition()
        handed_over = threading.Event()
        future.add_done_callback(lambda _future: handed_over.set())
        with pytest.raises(KeyboardInterrupt):
            wait_for([future])
        release.set()
        # The pool thread takes that same lock to hand its result over; nothing here may let go
        # of it on the thread's behalf (as Future.result would, by waiting on it).
        assert handed_over.wait(10), "the pool thread is stuck on a lock the interrupt left held"
        assert future.result(timeout=0) is True


def test_ctrl_c_during_a_long_task_comes_through_while_it_runs_and_the_task_still_finishes(monkeypatch):
    import am.interrupts

    waiting, caught = threading.Event(), threading.Event()
    real_wait = am.interrupts.wait

    def noted_wait(*args, **kwargs):  # type: ignore[no-untyped-def]
        waiting.set()
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(am.interrupts, "wait", noted_wait)

    def long_task() -> int:
        assert waiting.wait(60), "the main thread never waited for the task"
        signal.raise_signal(signal.SIGINT)
        # The task goes on until the main thread has had its KeyboardInterrupt: the interrupt cannot
        # have waited for the task to end.
        assert caught.wait(60), "the interrupt did not come through while the task ran"
        return 42

    pool = ThreadPool(1, thread_name_prefix="test-long")
    future = pool.submit(long_task)
    with pytest.raises(KeyboardInterrupt):
        result_of(future)
    assert not future.done(), "the interrupt waited for the task"
    caught.set()
    pool.shutdown(wait=True)
    assert future.result(timeout=0) == 42


def test_leaving_the_pool_waits_for_running_tasks_and_drops_nothing():
    done = []
    with ThreadPool(2, thread_name_prefix="test-wait") as pool:
        for number in range(6):
            pool.submit(lambda n=number: (time.sleep(0.05), done.append(n)))
    assert sorted(done) == list(range(6))
