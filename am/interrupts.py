"""Ctrl-C and SIGTERM held off while the main thread holds a lock that other threads wait for.

Python runs a signal handler in the main thread between two bytecodes, and the KeyboardInterrupt
it raises can land right after a lock was taken and before the ``with`` or ``try`` that would
give it back: inside ``ThreadPoolExecutor.submit``, ``concurrent.futures.wait`` or
``Future.result``, for instance. The lock then stays held for good; the pool thread that needs it
never finishes its task, and whatever joins that thread (the pool's shutdown, the interpreter's
exit) waits forever: Ctrl-C hangs the command instead of stopping it. So the main thread touches
thread pools only through this module: each such step runs with the signals' handlers swapped
for a recorder (:func:`deferred_interrupts`), and what was recorded is handled as soon as the
step is over. Waits run in slices of :data:`POLL_S`, so an interrupt is handled that soon.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
Handler = Callable[[int, FrameType | None], Any]

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Longest a signal waits for a wait on threads to let it through.
POLL_S = 0.1


class _Recorder:
    """Stands in for the real handlers while active; afterwards it passes every signal straight on."""

    def __init__(self) -> None:
        self.active = True
        self.handlers: dict[int, Handler] = {}
        self.received: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.active:
            self.received.append(signum)
        else:
            self.handlers[signum](signum, frame)

    def replay(self) -> None:
        """Hand each recorded signal to its handler, in order; the last exception they raise is raised.

        Every one is handed on, even after a handler raised: a handler that counts signals (the
        job's, where a second Ctrl-C is told to wait and a third forces the way out) sees them all.
        """
        raised: BaseException | None = None
        for signum in self.received:
            try:
                self.handlers[signum](signum, None)
            except BaseException as exc:
                raised = exc
        self.received.clear()
        if raised is not None:
            raise raised


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM recorded, not handled; handle them once it is left.

    Only Python-level handlers are swapped (an ignored or default signal keeps its disposition),
    and only in the main thread, the one thread where Python runs handlers. Blocks nest.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    recorder = _Recorder()
    swapped: list[int] = []
    try:
        for signum in SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                # Kept before the swap: a signal handled right after it is then restored below.
                recorder.handlers[signum] = handler
                swapped.append(signum)
                signal.signal(signum, recorder)
        yield
    finally:
        # From here the recorder passes a new signal on at once; restoring the handlers may then
        # be cut short, which leaves a recorder that behaves exactly like the handler it stands for.
        recorder.active = False
        try:
            for signum in reversed(swapped):
                signal.signal(signum, recorder.handlers[signum])
        finally:
            recorder.replay()


def wait_for(futures: Iterable[Future[Any]], *, return_when: str = ALL_COMPLETED,
              ) -> tuple[set[Future[Any]], set[Future[Any]]]:
    """``concurrent.futures.wait`` without a timeout, in slices an interrupt can come through between."""
    pending = set(futures)
    while True:
        with deferred_interrupts():
            done, not_done = wait(pending, timeout=POLL_S, return_when=return_when)
            if _satisfied(done, not_done, return_when):
                return done, not_done


def _satisfied(done: set[Future[Any]], not_done: set[Future[Any]], return_when: str) -> bool:
    if not not_done:
        return True
    if return_when == FIRST_COMPLETED:
        return bool(done)
    if return_when == FIRST_EXCEPTION:
        return any(not future.cancelled() and future.exception() is not None for future in done)
    return False


def result_of(future: Future[T]) -> T:
    """``future.result()``: waits in slices, then raises what the task raised."""
    wait_for([future])
    with deferred_interrupts():
        return future.result()


class ThreadPool:
    """A ThreadPoolExecutor that Ctrl-C in the main thread cannot leave wedged (see the module's doc).

    Leaving its ``with`` block waits for the tasks still running, as ThreadPoolExecutor does, but
    an interrupt during that wait ends it: the tasks then finish on their threads unattended.
    """

    def __init__(self, max_workers: int, *, thread_name_prefix: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix=thread_name_prefix)
        self._unfinished: set[Future[Any]] = set()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with deferred_interrupts():
            future = self._pool.submit(fn, *args, **kwargs)
            self._unfinished.add(future)
            future.add_done_callback(self._unfinished.discard)
        return future

    def shutdown(self, *, wait: bool = True, cancel_futures: bool = False) -> None:
        """Take no more tasks (dropping those not started with ``cancel_futures``); with ``wait``, wait for the rest."""
        with deferred_interrupts():
            self._pool.shutdown(wait=False, cancel_futures=cancel_futures)
        if wait:
            wait_for(list(self._unfinished))

    def __enter__(self) -> ThreadPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown(wait=True)


__all__ = ["POLL_S", "ThreadPool", "deferred_interrupts", "result_of", "wait_for"]
