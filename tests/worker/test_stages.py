"""The prefetch and upload stages on their own: ordering, back-pressure, stop, errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from am.errors import WorkerError
from am.worker.stages import Prefetcher, Uploader
from tests.waiting import wait_until


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


class Source:
    """Hands out numbered batches of three, ``count`` of them, then None; records every call."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.calls = 0
        self.discarded: list[list[int]] = []
        self.errors: list[BaseException] = []

    def receive(self) -> list[int] | None:
        if self.calls >= self.count:
            return None
        self.calls += 1
        base = (self.calls - 1) * 3
        return [base, base + 1, base + 2]

    def prefetcher(self, pool: ThreadPoolExecutor, *, depth: int = 2, fetch=None) -> Prefetcher[int]:  # type: ignore[no-untyped-def]
        return Prefetcher(receive=self.receive, fetch=fetch or (lambda item: None), discard=self.discarded.append,
                          pool=pool, depth=depth, on_error=self.errors.append)


def test_prefetcher_hands_out_batches_in_order_once_fetched(pool: ThreadPoolExecutor) -> None:
    fetched: set[int] = set()

    def fetch(item: int) -> None:
        time.sleep(0.02 * (item % 3 == 0))  # the first item of each batch is the slowest
        fetched.add(item)

    source = Source(4)
    prefetcher = source.prefetcher(pool, fetch=fetch)
    prefetcher.start()
    taken = []
    while (batch := prefetcher.take()) is not None:
        assert set(batch) <= fetched, "a batch was handed out before its items were fetched"
        taken.append(batch)
    assert taken == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert source.errors == [] and source.discarded == []


def test_prefetcher_receives_at_most_depth_batches_ahead(pool: ThreadPoolExecutor) -> None:
    source = Source(10)
    prefetcher = source.prefetcher(pool, depth=2)
    prefetcher.start()
    wait_until(lambda: source.calls == 2, timeout=30, what="two receives")
    time.sleep(0.2)
    assert source.calls == 2 and prefetcher.waiting == 2  # back-pressure: no third receive
    assert prefetcher.take() == [0, 1, 2]
    wait_until(lambda: source.calls == 3, timeout=30, what="a third receive")
    time.sleep(0.2)
    assert source.calls == 3
    prefetcher.stop()


def test_prefetcher_stop_discards_what_was_not_taken(pool: ThreadPoolExecutor) -> None:
    source = Source(10)
    prefetcher = source.prefetcher(pool, depth=2)
    prefetcher.start()
    wait_until(lambda: prefetcher.waiting == 2, timeout=30, what="two batches waiting")
    prefetcher.stop()
    prefetcher.stop()  # idempotent
    # Given back in one call, once the receiving thread has seen the stop (no receive under way).
    wait_until(lambda: bool(source.discarded), timeout=30, what="the batches discarded")
    assert prefetcher.join(5)
    assert source.discarded == [[0, 1, 2, 3, 4, 5]]
    assert prefetcher.take() is None
    time.sleep(0.2)
    assert source.calls == 2


def test_prefetcher_discards_a_batch_that_arrives_after_stop(pool: ThreadPoolExecutor) -> None:
    entered, release = threading.Event(), threading.Event()
    discarded: list[list[int]] = []

    def receive() -> list[int]:
        entered.set()
        release.wait(5)
        return [7]

    prefetcher = Prefetcher(receive=receive, fetch=lambda item: None, discard=discarded.append, pool=pool, depth=2,
                            on_error=lambda exc: None)
    prefetcher.start()
    assert entered.wait(5)
    prefetcher.stop()  # while a receive is in progress, as during a long poll
    release.set()
    wait_until(lambda: discarded == [[7]], timeout=30, what="the late batch discarded")
    assert prefetcher.take() is None


def test_prefetcher_fetch_error_is_raised_by_take(pool: ThreadPoolExecutor) -> None:
    def fetch(item: int) -> None:
        if item == 4:
            raise RuntimeError("decoder crashed")

    prefetcher = Source(3).prefetcher(pool, fetch=fetch)
    prefetcher.start()
    assert prefetcher.take() == [0, 1, 2]
    with pytest.raises(RuntimeError, match="decoder crashed"):
        prefetcher.take()
    prefetcher.stop()


def test_prefetcher_receive_error_goes_to_on_error_and_ends_the_stream(pool: ThreadPoolExecutor) -> None:
    errors: list[BaseException] = []

    def receive() -> list[int]:
        raise ConnectionError("queue gone")

    prefetcher = Prefetcher(receive=receive, fetch=lambda item: None, discard=lambda b: None, pool=pool, depth=2,
                            on_error=errors.append)
    prefetcher.start()
    assert prefetcher.take() is None
    assert [str(e) for e in errors] == ["queue gone"]


def test_uploader_settles_batches_in_order_after_all_their_puts(pool: ThreadPoolExecutor) -> None:
    put: set[int] = set()
    settled: list[list[int]] = []

    def slow_first(item: int) -> None:
        time.sleep(0.1 if item < 3 else 0.0)  # the first batch's writes finish last
        put.add(item)

    def settle(batch: list[int]) -> None:
        assert set(batch) <= put
        settled.append(batch)

    uploader = Uploader(put=slow_first, settle=settle, pool=pool, depth=3, on_error=pytest.fail)
    uploader.start()
    for base in (0, 3, 6):
        assert uploader.submit([base, base + 1, base + 2])
    uploader.close()
    assert uploader.join(5)
    assert settled == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_uploader_submit_waits_while_depth_batches_are_unsettled(pool: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    settled: list[list[int]] = []

    def settle(batch: list[int]) -> None:
        gate.wait(5)
        settled.append(batch)

    uploader = Uploader(put=lambda item: None, settle=settle, pool=pool, depth=1, on_error=pytest.fail)
    uploader.start()
    assert uploader.submit([1])
    second_done = threading.Event()
    threading.Thread(target=lambda: uploader.submit([2]) and second_done.set(), daemon=True).start()
    time.sleep(0.3)
    assert not second_done.is_set(), "submit should wait for the unsettled batch (back-pressure)"
    gate.set()
    assert second_done.wait(5)
    uploader.close()
    assert uploader.join(5)
    assert settled == [[1], [2]]


@pytest.mark.parametrize("where", ["put", "settle"])
def test_uploader_error_stops_settling_and_refuses_more(pool: ThreadPoolExecutor, where: str) -> None:
    errors: list[BaseException] = []
    settled: list[list[int]] = []

    def put(item: int) -> None:
        if where == "put" and item == 2:
            raise OSError("disk full")

    def settle(batch: list[int]) -> None:
        if where == "settle" and batch == [2]:
            raise OSError("disk full")
        settled.append(batch)

    uploader = Uploader(put=put, settle=settle, pool=pool, depth=4, on_error=errors.append)
    uploader.start()
    assert uploader.submit([1]) and uploader.submit([2]) and uploader.submit([3])
    wait_until(lambda: uploader.failed, timeout=30, what="the uploader failing")
    assert uploader.submit([4]) is False
    uploader.close()
    assert uploader.join(5)
    assert settled == [[1]]
    assert [str(e) for e in errors] == ["disk full"]


def test_depth_must_be_positive(pool: ThreadPoolExecutor) -> None:
    with pytest.raises(WorkerError, match="prefetch depth"):
        Source(1).prefetcher(pool, depth=0)
    with pytest.raises(WorkerError, match="upload depth"):
        Uploader(put=lambda i: None, settle=lambda b: None, pool=pool, depth=0, on_error=lambda e: None)
