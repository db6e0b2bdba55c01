"""One segmentation job through a backend: upload tiles, enqueue, track, collect masks.

The job owns its S3 prefix ``<job_id>/`` in both buckets and its results queue; all of them
are removed when the job ends, also on failure or Ctrl-C. Masks are written into the dataset
as they arrive, so finished tiles survive a failed or interrupted job.

Tiles may be sent while they are still being cut: the workers start first, each chunk of
tiles is uploaded and enqueued on a sender thread while the caller cuts the next one, and
reports already waiting are collected between chunks. The job finishes only once it is sealed
(every tile sent) and no tile is pending::

    with open_job(backend, layout=layout, settings=settings, job_id=new_job_id(), workers=2) as job:
        for chunk in tiler.chunks():
            job.send(chunk.group, chunk.tiles)     # (index, uint8 array or PNG file) pairs
        job.seal()
        job.wait()
    report = raise_for_lost_tiles(job.report())

``run_job`` does the same for groups whose tiles are all on disk already.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from am.backends import Backend
from am.cleanup import (
    CLEANUP_HINT_AWS_S,
    CLEANUP_HINT_S,
    CLEANUP_RETRY_AFTER_FAILURE,
    ForcedQuit,
    InterruptGuard,
    clean_up_steps,
    run_clean_up,
)
from am.collector import RESULT_HOLD_S, ResultCollector
from am.dataset import DatasetLayout
from am.errors import (
    CleanupIncomplete,
    InputError,
    JobFailed,
    JobTimeout,
    LauncherError,
    describe_fault,
)
from am.imageio import read_image
from am.interrupts import ThreadPool, result_of
from am.launchers.local import STOP_TIMEOUT_S
from am.messages import TileMessage, tile_name, tiles_key
from am.prepare import PreparedGroup
from am.settings import Settings
from am.tilepack import pack_tiles
from am.tracking import JobTracker
from am.transport.queue import Queue, create_results_queue
from am.transport.storage import Storage

log = logging.getLogger(__name__)

RESULT_WAIT_S = 2
HEALTH_CHECK_EVERY_S = 5.0
# Tiles sent but not yet collected, per local worker, when max_tiles_in_flight is 0. The embedded
# endpoint scans a whole queue on every receive, so a queue holding thousands of tiles slows every
# worker and the collector alike (a 30000 x 30000 image has about 6000 tiles: 0.4 s per receive);
# a window of a few batches per worker keeps the workers fed and both queues short. SQS has no
# such cost, and a window would only cap what many ECS tasks can take, so AWS gets none.
IN_FLIGHT_PER_LOCAL_WORKER = 64
ROOM_WAIT_S = 1
# Tiles per message and object when tiles_per_message is 0. Locally, every request costs the
# embedded endpoint CPU that the workers' models need (8 tiles: 1/8 of the requests, and still
# several messages per worker to share out); on AWS a GPU batch of 64 takes two messages.
TILES_PER_MESSAGE_LOCAL = 8
TILES_PER_MESSAGE_AWS = 32
# After Ctrl-C or SIGTERM the workers finish the batch in hand and report it as they stop. Reports
# already on the results queue then are collected for at most this long before the job's data is
# deleted, so a rerun reuses those masks instead of segmenting the tiles again; nothing new is awaited.
# As long as the longest a receive cut short by the interrupt can keep reports hidden (its wait and
# their hold, counted from before the workers were stopped), so that window ends within the budget.
FINAL_COLLECT_S = float(RESULT_WAIT_S + RESULT_HOLD_S)
FINAL_RECEIVE_WAIT_S = 1
# What a timeout's message advises where no worker was found hung.
TIMEOUT_ADVICE = "raise timeout_per_tile_s or add workers, then rerun to resume"


@dataclass
class JobReport:
    job_id: str
    tiles: int
    completed: int
    duplicates: int
    compute_s: float
    seconds: dict[str, float] = field(default_factory=dict)
    dead: dict[str, str] = field(default_factory=dict)


def _message(job_id: str, group: str, tiles: tuple[int, ...], key: str, *, model: str, tta: str,
             reply: str, valid: tuple[int, int] | None = None) -> str:
    return TileMessage(job=job_id, group=group, tiles=tiles, input=key, output=key, model=model,
                       reply=reply, tta=tta, valid=valid).to_json()


def tile_pixels(tile: np.ndarray | Path, *, size: int) -> np.ndarray:
    """A tile's uint8 pixels: the array itself, or the tile file a rerun finds on disk.

    A tile file that cannot be used (damaged, or not what the plan says) stops the job with
    the file named: it is the orchestrator's own intermediate file, so the fix is to cut the
    group again, not to send workers something they can only fail on.
    """
    if isinstance(tile, Path):
        where, fix = f"tile file {tile}", f"; delete {tile.parent.parent} so that the next run cuts the group again"
        try:
            pixels = read_image(tile)
        except InputError as exc:
            raise InputError(f"{where} cannot be read ({describe_fault(exc)}){fix}") from exc
    else:
        where, fix, pixels = "a tile", "", np.asarray(tile)
    if pixels.dtype != np.uint8 or pixels.shape != (size, size):
        raise InputError(f"{where} is {pixels.dtype} of shape {pixels.shape}, not an 8-bit grey "
                         f"{size}x{size} tile{fix}")
    return pixels


def tiles_per_message(settings: Settings, *, backend: str) -> int:
    """Tiles one message and one object carry: the setting, or the backend's default."""
    if settings.tiles_per_message:
        return settings.tiles_per_message
    return TILES_PER_MESSAGE_LOCAL if backend == "local" else TILES_PER_MESSAGE_AWS


def _check_workers(backend: Backend, collector: ResultCollector, *, results: Queue, dead_letters: Queue,
                   revive: Callable[[], bool] | None = None) -> None:
    """The periodic check: give up dead-lettered tiles, and fail if no worker is left while tiles are pending.

    ``revive`` may start workers again instead (see :meth:`Job.revive_idle_workers`); it returns
    True when it did.
    """
    tracker = collector.tracker
    collector.handle_dead_letters(dead_letters, results=results)
    if tracker.finished or backend.launcher.alive() > 0:
        return
    if revive is not None and revive():
        return
    # Workers leave when the tile queue is empty, which can be long before their reports are all
    # collected (a big job on a busy machine): those reports still count.
    collector.drain(results, wait_s=RESULT_WAIT_S)
    collector.handle_dead_letters(dead_letters, results=results)
    if tracker.finished or backend.launcher.alive() > 0:
        return
    launcher = backend.launcher
    detail = ""
    tail = getattr(launcher, "log_tail", None)
    if callable(tail):
        detail = f"\n{getattr(launcher, 'log_tail_heading', 'last worker log lines')}:\n" + tail()
    still_cutting = "" if tracker.sealed else " (and more were still being cut)"
    codes = getattr(launcher, "exit_codes", None)
    how = describe_exits(codes()) if callable(codes) else ""
    advice = getattr(launcher, "rerun_advice", None)
    fix = advice() if callable(advice) else None
    # A launcher that knows why its workers could not start says what to fix first: a plain rerun fails alike.
    what_to_do = (f"{fix}; finished tiles are kept" if fix
                  else "finished tiles are kept, rerun the same command to resume")
    raise LauncherError(
        f"all workers stopped while {len(tracker.pending)} tile(s) were pending{still_cutting}"
        f"{'; ' + how if how else ''}; {what_to_do}{detail}"
    )


def describe_exits(codes: Sequence[int | None]) -> str:
    """How the workers that did not exit cleanly ended, by number: a log that just stops says nothing
    about a kill, so the code or signal is the only trace of it."""
    parts = []
    for number, code in enumerate(codes):
        if code is None or code == 0:
            continue
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            oom = " (the out-of-memory killer sends it)" if -code == signal.SIGKILL else ""
            parts.append(f"worker {number} was killed by {name}{oom}")
        else:
            parts.append(f"worker {number} exited with {code}")
    return ", ".join(parts)


def _wait_for_tiles(backend: Backend, collector: ResultCollector, *, results: Queue, dead_letters: Queue,
                    deadline: float, budget: str = "") -> None:
    """Collect reports until every tile is done or given up; JobTimeout after ``deadline``.

    ``budget`` says how the deadline was set (:func:`describe_budget`), for the timeout's message.
    """
    tracker = collector.tracker
    next_check = time.monotonic() + HEALTH_CHECK_EVERY_S
    while not tracker.finished:
        collector.receive(results, wait_s=RESULT_WAIT_S)
        now = time.monotonic()
        if now >= next_check and not tracker.finished:
            next_check = now + HEALTH_CHECK_EVERY_S
            _check_workers(backend, collector, results=results, dead_letters=dead_letters)
        if now > deadline:
            raise JobTimeout(
                f"job did not finish in time: {len(tracker.pending)} of {tracker.total} tile(s) pending{budget}; "
                + timeout_advice(backend),
                {name: "timed out" for name in tracker.pending},
            )


def timeout_advice(backend: Backend) -> str:
    """What a timeout's message advises: :data:`TIMEOUT_ADVICE`, unless the launcher knows better.

    An ECS launcher whose tasks never started running (no GPU instance joined the cluster) says so:
    its workers never took a tile, so more time or more workers would only wait the same way.
    """
    advice = getattr(backend.launcher, "timeout_advice", None)
    return (advice() if callable(advice) else None) or TIMEOUT_ADVICE


def describe_budget(seconds: float, *, tiles: int, running: int, started: int) -> str:
    """How a time budget was set, for its timeout's message: with fewer workers running than were
    started, adding workers may not help (they could fail or find no capacity alike), so say so."""
    text = f" after its budget of {seconds:.0f} s for {tiles} tile(s) on {running} worker(s)"
    if running < started:
        text += (f" ({started - running} of the {started} asked for had stopped or never started: see the worker "
                 "logs, or on AWS the cluster's capacity)")
    return text


@dataclass
class Job:
    """A job that takes its tiles in chunks while its workers already run; open it with :func:`open_job`.

    Calls come from one thread: :meth:`send` for each chunk, then :meth:`seal` once every tile is
    sent, then :meth:`wait`. Uploads run on one sender thread, one chunk at a time, so at most
    one chunk waits in memory while the next is cut. ``seconds`` gathers where the job's time
    went: ``upload`` (sender thread, busy), ``collect`` (reports handled while sending, busy)
    and ``tail`` (from the seal until the last report).
    """

    def __init__(self, backend: Backend, *, results_url: str, layout: DatasetLayout, settings: Settings,
                 job_id: str, show_progress: bool = True, worker_logs: Path | None = None,
                 expected_tiles: int | None = None) -> None:
        self.job_id = job_id
        self.backend = backend
        self.results_url = results_url
        # The tile queue's own redrive policy, when the backend knows it, decides how often a tile is tried.
        self.tracker = JobTracker([], max_attempts=backend.max_receive_count or settings.max_receive_count,
                                  expect_more=True)
        self.seconds: dict[str, float] = {"upload": 0.0, "collect": 0.0}
        self._settings = settings
        self._workers = 0
        sqs = backend.clients.sqs()
        self._storage = Storage(backend.clients.s3(), threads=settings.transfer_threads)
        # The sender thread's own clients: a Ctrl-C in the main thread can leave the lock of a
        # client's connection pool held (see am.interrupts), and the clean-up waits for the sender.
        self._send_storage = Storage(backend.clients.s3(), threads=settings.transfer_threads)
        self._tile_queue = Queue(backend.clients.sqs(), backend.queue_url)
        self._results = Queue(sqs, results_url)
        self._dead_letters = Queue(sqs, backend.dead_letter_queue_url)
        # Tiles are cut while the first ones are segmented: a bar whose total grew with them would
        # read "done" after every chunk. The count planned from image headers gives the total at once.
        self._bar = tqdm(total=expected_tiles or 0, unit="tile", desc="segment", disable=not show_progress)
        self._sent = 0
        self._collector = ResultCollector(job_id=job_id, tracker=self.tracker, storage=self._storage,
                                     bucket=backend.output_bucket, layout=layout, tile_size=settings.tile_size,
                                     on_done=self._bar.update, worker_logs=worker_logs)
        self._window = 0
        self._per_message = tiles_per_message(settings, backend=backend.name)
        # Each group's tile extent that is image, where its image is smaller than a tile (see send).
        self._valid: dict[str, tuple[int, int] | None] = {}
        self._sender = ThreadPool(1, thread_name_prefix="am-send")
        self._sending: Future[float] | None = None
        self._next_check = time.monotonic() + HEALTH_CHECK_EVERY_S
        self._guard = InterruptGuard(job_id, hint_s=CLEANUP_HINT_S if backend.name == "local" else CLEANUP_HINT_AWS_S)

    def start_workers(self, count: int) -> None:
        """Start ``count`` workers; the count is kept so that workers which left idle can be replaced."""
        self._workers = count
        self._window = in_flight_window(self._settings, backend=self.backend.name, workers=count)
        self.backend.launcher.start(count, self.backend.worker_environment)

    def send(self, group: str, tiles: Sequence[tuple[int, np.ndarray | Path]], *,
             valid: tuple[int, int] | None = None) -> None:
        """Upload ``(index, uint8 array or PNG file)`` tiles and enqueue them, on the sender thread.

        Tiles go out ``tiles_per_message`` to an object and a message (fewer in a chunk's last one).
        ``valid`` is the rows and columns of each tile that are image where the group's image is
        smaller than a tile (:func:`am.prepare.tile_valid_extent`): the messages carry it, so the
        workers make the masks of the image alone, not of its reflected padding.

        Waits for the previous chunk first (raising its error, if any), so one chunk travels while
        the caller cuts the next; then collects the reports already waiting. With a window of
        tiles in flight, the chunk goes out in pieces of half the window, each once there is room.
        """
        size = self._settings.tile_size
        if valid is not None and not all(1 <= side <= size for side in valid):
            raise ValueError(f"group {group}: image extent {valid} of its tiles does not fit tiles of {size} px")
        if self._valid.setdefault(group, valid) != valid:
            raise ValueError(f"group {group}: tiles sent with image extent {valid}, earlier ones with "
                             f"{self._valid[group]}; one group has one tile plan")
        step = max(1, self._window // 2) if self._window else max(1, len(tiles))
        for start in range(0, len(tiles), step):
            piece = list(tiles[start:start + step])
            self._wait_for_room(len(piece))
            self._finish_sending()
            self.tracker.add(tile_name(group, index) for index, _ in piece)
            self._sent += len(piece)
            if self._sent > self._bar.total:
                self._bar.total = self._sent
                self._bar.refresh()
            self._sending = self._sender.submit(self._upload, group, piece)
            self.collect()

    def expect_fewer(self, count: int) -> None:
        """``count`` of the tiles planned from image headers will not be sent (an interrupted run
        left their masks): the bar's total drops now, not only when the job is sealed."""
        total = max(self._sent, self._bar.total - max(0, count))
        if total != self._bar.total:
            self._bar.total = total
            self._bar.refresh()

    def collect(self) -> None:
        """Handle every report already waiting, without waiting for more; check the workers when due."""
        started = time.monotonic()
        self._collector.drain(self._results, wait_s=0)
        self.seconds["collect"] += time.monotonic() - started
        self._check_workers_when_due()

    def seal(self) -> None:
        """Every tile is sent: wait for the last chunk to be out; from now on the job can finish."""
        self._finish_sending()
        if self._bar.total != self._sent:  # the plan was an estimate
            self._bar.total = self._sent
            self._bar.refresh()
        # Workers that left idle just before the last chunk must not be taken for crashed ones later.
        self.revive_idle_workers()
        self.tracker.seal()
        log.info("job %s: %d tile(s) on the %s backend", self.job_id, self.tracker.total, self.backend.name)

    def wait(self) -> None:
        """Collect reports until every tile is done or given up; raises on timeout or when no worker is left."""
        if not self.tracker.sealed:
            raise RuntimeError("seal() the job before waiting for it: more tiles could still come")
        started = time.monotonic()
        running, total = self.running_workers(), self.tracker.total
        budget_s = self._settings.job_timeout_s(total, workers=running)
        log.info("job %s: %.0f s to finish %d tile(s) on %d worker(s)", self.job_id, budget_s, total, running)
        _wait_for_tiles(self.backend, self._collector, results=self._results, dead_letters=self._dead_letters,
                        deadline=started + budget_s,
                        budget=describe_budget(budget_s, tiles=total, running=running, started=self._started()))
        self.seconds["tail"] = time.monotonic() - started

    def running_workers(self) -> int:
        """How many workers share the tiles now, for the job's time budgets: the launcher's live ones,
        at most as many as were started, and at least 1.

        A local worker that died at start, or ECS tasks that found no capacity (run_task starts
        fewer), leave fewer than the setting asks for. An ECS service's tasks still waiting for
        capacity count (:meth:`EcsLauncher.alive` takes its desired count as the floor): its
        scheduler places them once there is room, and the service tells no cheap count of tasks
        that never will be, so a service's budget stays that of the tasks asked for.
        """
        return max(1, min(self._started(), self.backend.launcher.alive()))

    def _started(self) -> int:
        """Workers asked for: those of :meth:`start_workers`, or the setting before any were started."""
        return self._workers or self._settings.workers

    def report(self) -> JobReport:
        t = self.tracker
        return JobReport(self.job_id, t.total, len(t.completed), t.duplicates, t.compute_s, dict(self.seconds), t.dead)

    def revive_idle_workers(self) -> bool:
        """Start the workers again if every one of them left idle while tiles were still being cut.

        Workers leave after ``idle_exit_s`` without work. Started before the first tile is cut,
        they may run out of patience on a slow preparation (a huge image, or the next group's
        normalisation) through no fault of their own. Only a launcher that reports exit codes can
        tell that from a crash: local processes, and ECS tasks (whose worker exited by itself; a
        task someone stopped has no code). A crash, or a stop, is never retried here.
        """
        codes = getattr(self.backend.launcher, "exit_codes", None)
        if self.tracker.sealed or not callable(codes) or self.backend.launcher.alive() > 0:
            return False
        exits = codes()
        if not exits or any(code != 0 for code in exits):
            return False
        log.warning("every worker left idle (idle_exit_s %.0f s) while tiles were still being cut; starting %d again",
                    self._settings.idle_exit_s, self._workers)
        self.start_workers(self._workers)
        return True

    def cleanup_hint_s(self, *, collecting: bool) -> float:
        """About how long the clean-up takes at most: the workers' stop, and the final collection if any."""
        if self.backend.name != "local":
            return CLEANUP_HINT_AWS_S
        return CLEANUP_HINT_S + (FINAL_COLLECT_S if collecting else 0.0)

    def close(self, *, after_failure: bool, interrupted: bool = False, failure: BaseException | None = None) -> None:
        """Stop sending, stop the workers, delete the job's results queue and S3 prefixes (:func:`clean_up_steps`).

        After an interrupt (Ctrl-C or SIGTERM) the masks reported by then, the stopping workers'
        last batches included, are collected between the stop and the deletion (:meth:`collect_reported`).
        A signal during the clean-up does not cut it short (see :class:`InterruptGuard`); after a
        clean-up that followed a success it is raised as KeyboardInterrupt once the clean-up is done.
        One more signal quits at once: CleanupIncomplete then names what was left behind. After a
        ``failure`` (the error that ended the job) that error stays the one to report, and to decide
        the exit code: what was left behind is logged instead, and the caller raises the failure.
        """
        guard = self._guard
        guard.cleaning = True
        guard.collecting = interrupted
        guard.hint_s = self.cleanup_hint_s(collecting=interrupted)
        steps = clean_up_steps(self.backend, job_id=self.job_id, results_url=self.results_url,
                                settings=self._settings, after_failure=after_failure,
                                dead_letters=self._collector.delete_dead_letters if self.tracker.dead else None,
                                collect=self.collect_reported if interrupted else None)
        remaining = [step.left for step in steps if step.left]
        try:
            if guard.forced:
                raise ForcedQuit("forced before the clean-up began")
            # An upload still running must finish before the prefixes go, or it would leave objects behind.
            self._sender.shutdown(wait=True, cancel_futures=True)
            self._bar.close()
            run_clean_up(steps, job_id=self.job_id, after_failure=after_failure, remaining=remaining)
        except ForcedQuit:
            self._kill_workers()
            if failure is not None:
                log.error("%s", self._left_behind(remaining, failed=True))
                return
            raise CleanupIncomplete(self._left_behind(remaining)) from None
        finally:
            guard.cleaning = False
        if guard.extra and not after_failure:
            raise KeyboardInterrupt("signal during the clean-up")

    def _kill_workers(self) -> None:
        """Quitting at once: workers that have a quick way out (local ones) take it, so nothing waits for them."""
        kill = getattr(self.backend.launcher, "kill", None)
        if kill is not None:
            kill()

    @property
    def forced(self) -> bool:
        """Whether the user quit the clean-up at once (the workers were then killed, not stopped)."""
        return self._guard.forced

    def _left_behind(self, remaining: list[str], *, failed: bool = False) -> str:
        """The message of a clean-up the user cut short: what it did not do, and how to do it by hand."""
        head = (f"interrupted while job {self.job_id} was cleaning up after it failed, so it quit without finishing"
                if failed else f"interrupted again while job {self.job_id} was cleaning up, so it quit without "
                "finishing")
        kept = "masks already written to the dataset are kept; rerun the same command to resume"
        if self.backend.name == "local" and not self._settings.endpoint_url:
            return (f"{head}; its queue and objects were on the embedded endpoint, which ends with this command, and "
                    f"the local workers were stopped; {kept}")
        if not remaining:
            return f"{head}, but nothing was left behind; {kept}"
        endpoint = (f" (add --endpoint-url {self._settings.endpoint_url} to the aws commands)"
                    if self._settings.endpoint_url else "")
        return f"{head}; left behind{endpoint}: " + "; ".join(remaining) + f"; {kept}"

    def collect_reported(self, *, budget_s: float = FINAL_COLLECT_S) -> int:
        """Write the masks already reported done to the dataset, for at most ``budget_s``; returns how many.

        Runs after an interrupt, once the workers are stopped and before the job's objects and
        results queue are deleted: without it, the masks of every report not yet collected (the
        stopping workers' last batches among them) would be deleted with the job, and the rerun
        would segment those tiles again. It collects exactly as :meth:`wait` does, but with the
        quick retries of a clean-up and only what is already reported: the first empty receive
        ends it, unless the interrupt cut a receive short: the reports that receive may have taken
        unseen are awaited until they are visible again (``am.collector.RESULT_HOLD_S``), within the budget.
        A signal meanwhile does not end it (see :class:`InterruptGuard`); should an interrupt come
        all the same (the guard works in the main thread only), it ends the collection, and the
        clean-up goes on, as does the first interrupt, which is what the caller raises.
        """
        sqs, s3 = self.backend.clients.sqs(), self.backend.clients.s3()
        before = len(self.tracker.completed)
        collector = ResultCollector(job_id=self.job_id, tracker=self.tracker, bucket=self.backend.output_bucket,
                               storage=Storage(s3, threads=self._settings.transfer_threads,
                                               retry=CLEANUP_RETRY_AFTER_FAILURE),
                               layout=self._collector.layout, tile_size=self._settings.tile_size,
                               on_done=lambda _count: None)
        results = Queue(sqs, self.results_url, retry=CLEANUP_RETRY_AFTER_FAILURE)
        deadline = time.monotonic() + budget_s
        hidden_until = self._collector.hidden_until
        # Whether the last receive brought reports (more may follow): nothing is known before the first.
        more = True
        cut_short = False
        try:
            if self._collector.in_hand:
                collector.handle_results(self._collector.in_hand)
            while self.tracker.pending_count:
                if time.monotonic() >= deadline:
                    # Only a deadline that came while reports could still be waiting leaves any behind.
                    cut_short = more or time.monotonic() < hidden_until
                    break
                more = collector.receive(results, wait_s=FINAL_RECEIVE_WAIT_S)
                if not more and time.monotonic() >= hidden_until:
                    break
        except OSError as exc:
            # The interrupt is the error to report; a mask that cannot be written is only named here.
            log.error("job %s: could not write the masks reported while the job was interrupted: %s",
                      self.job_id, exc)
        except KeyboardInterrupt:
            log.warning("job %s: interrupted again; the masks reported but not yet collected are lost, "
                        "a rerun segments those tiles again", self.job_id)
        collected = len(self.tracker.completed) - before
        if cut_short:
            log.warning("job %s: stopped collecting after %.0f s, perhaps with reports still waiting; a rerun "
                        "segments the %d tile(s) not collected", self.job_id, budget_s, self.tracker.pending_count)
        log.info("job %s: collected %d mask tile(s) reported while the job was interrupted", self.job_id, collected)
        return collected

    def _wait_for_room(self, count: int) -> None:
        """Collect reports until ``count`` more tiles fit in the window; the window's share of the timeout applies.

        The budget is shared among the workers running once a stall outlasts ``timeout_base_s`` (the
        least it can be), so the launcher is asked for its live workers once per stall, not every second.
        """
        if not self._window:
            return
        budget: float | None = None
        note = ""
        progress_at = time.monotonic()
        while self.tracker.pending_count and self.tracker.pending_count + count > self._window:
            started = time.monotonic()
            before = self.tracker.pending_count
            self._collector.receive(self._results, wait_s=ROOM_WAIT_S)
            now = time.monotonic()
            self.seconds["collect"] += now - started
            self._check_workers_when_due()
            if self.tracker.pending_count < before:
                progress_at, budget = now, None
                continue
            if now - progress_at <= self._settings.timeout_base_s:
                continue
            if budget is None:
                running = self.running_workers()
                budget = self._settings.job_timeout_s(self._window, workers=running)
                note = describe_budget(budget, tiles=self._window, running=running, started=self._started())
            if now - progress_at > budget:
                raise JobTimeout(
                    f"no tile finished for {now - progress_at:.0f} s while {self.tracker.pending_count} "
                    f"were in flight{note}; {timeout_advice(self.backend)}",
                    {name: "timed out" for name in self.tracker.pending},
                )

    def _check_workers_when_due(self) -> None:
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + HEALTH_CHECK_EVERY_S
            _check_workers(self.backend, self._collector, results=self._results, dead_letters=self._dead_letters,
                           revive=self.revive_idle_workers)

    def _finish_sending(self) -> None:
        if self._sending is not None:
            sending, self._sending = self._sending, None
            self.seconds["upload"] += result_of(sending)

    def _upload(self, group: str, tiles: list[tuple[int, np.ndarray | Path]]) -> float:
        """Runs on the sender thread: tile objects to the input bucket, then their messages; returns seconds taken."""
        started = time.monotonic()
        bundles = [tiles[i:i + self._per_message] for i in range(0, len(tiles), self._per_message)]
        objects, messages = [], []
        for bundle in bundles:
            indices = tuple(index for index, _ in bundle)
            key = tiles_key(self.job_id, group, indices)
            data = pack_tiles(np.stack([tile_pixels(tile, size=self._settings.tile_size) for _, tile in bundle]))
            objects.append((key, data))
            messages.append(_message(self.job_id, group, indices, key, model=self.backend.model,
                                     tta=self._settings.tta, reply=self.results_url, valid=self._valid.get(group)))
        self._send_storage.put_many(self.backend.input_bucket, objects)
        self._tile_queue.send_many(messages)
        return time.monotonic() - started


def in_flight_window(settings: Settings, *, backend: str, workers: int) -> int:
    """Most tiles sent and not yet collected (0: no limit): the setting, or the backend's default."""
    if settings.max_tiles_in_flight:
        return settings.max_tiles_in_flight
    return IN_FLIGHT_PER_LOCAL_WORKER * max(1, workers) if backend == "local" else 0


@contextmanager
def open_job(backend: Backend, *, layout: DatasetLayout, settings: Settings, job_id: str, workers: int,
             show_progress: bool = True, worker_logs: Path | None = None,
             expected_tiles: int | None = None) -> Iterator[Job]:
    """Create the job's results queue and start ``workers`` workers; on leaving, clean up whatever happened.

    Leaving the block, normally or by any exception (Ctrl-C and SIGTERM included), stops the
    workers and deletes the results queue and the job's S3 prefixes; masks already collected stay.
    On Ctrl-C or SIGTERM the masks reported by then are collected first (:meth:`Job.collect_reported`),
    and the interrupt is raised again as it came. Signals after it do not cut the clean-up short
    (:class:`InterruptGuard`). ``worker_logs`` is where local workers write their logs, read
    for the reason a worker rejected a message. ``expected_tiles``, where known before the first
    tile is cut, is the progress bar's total from the start.
    """
    sqs = backend.clients.sqs()
    results_url = create_results_queue(sqs, prefix=settings.results_queue_prefix, job=job_id)
    log.info("job %s started on the %s backend", job_id, backend.name)
    job = Job(backend, results_url=results_url, layout=layout, settings=settings, job_id=job_id,
              show_progress=show_progress, worker_logs=worker_logs, expected_tiles=expected_tiles)
    job._guard.install()
    try:
        try:
            job.start_workers(workers)
            yield job
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            failure = None if interrupted else exc
            if failure is not None:
                # Said now, as the clean-up may wait the workers' stop timeout; what to do comes with the error
                # once it is done, since the stop may find a worker hung.
                log.error("job %s failed: %s; cleaning up first (stopping the workers, deleting its queue and "
                          "objects: up to about %.0f s), what to do follows", job_id,
                          _first_line(failure).replace(f"; {TIMEOUT_ADVICE}", ""), job.cleanup_hint_s(collecting=False))
            before = _exit_codes(backend)
            job.close(after_failure=True, interrupted=interrupted, failure=failure)
            if isinstance(exc, JobTimeout) and not job.forced:
                hung = _killed_by_stop(before, _exit_codes(backend))
                if hung:
                    raise JobTimeout(_hung_advice(str(exc), hung), exc.failed) from exc
            raise
        job.close(after_failure=False)
    finally:
        job._guard.uninstall()


def _first_line(error: BaseException) -> str:
    """An error's first line (a worker log tail may follow it), or its type where it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _exit_codes(backend: Backend) -> list[int | None]:
    """The workers' exit codes (None: still running), where the launcher tells them; [] where it does not."""
    codes = getattr(backend.launcher, "exit_codes", None)
    return list(codes()) if callable(codes) else []


def _killed_by_stop(before: list[int | None], after: list[int | None]) -> list[int]:
    """The workers, by number, that were running when the job failed and had to be killed when asked to stop."""
    return [number for number, (was, now) in enumerate(zip(before, after, strict=False))
            if was is None and now == -signal.SIGKILL]


def _hung_advice(message: str, hung: list[int]) -> str:
    """A timeout's message, advising on the unresponsive workers that the stop found, not on more time."""
    which = ", ".join(str(number) for number in hung)
    found = (f"worker(s) {which} did not respond: still running, but not stopped {STOP_TIMEOUT_S:.0f} s after being "
             "asked to, so they were killed; a worker that hangs (a stuck device or driver, a process stopped with "
             "SIGSTOP or in a debugger) keeps its tiles until the job times out: see the worker logs, then rerun to "
             "resume (raise timeout_per_tile_s or add workers only where the workers were merely slow)")
    return message.replace(TIMEOUT_ADVICE, found) if TIMEOUT_ADVICE in message else f"{message}; {found}"


def raise_for_lost_tiles(report: JobReport) -> JobReport:
    """The report of a job whose every tile completed; JobFailed naming each tile that did not."""
    if report.dead:
        listed = "\n".join(f"  {name}: {reason}" for name, reason in sorted(report.dead.items()))
        raise JobFailed(
            f"{len(report.dead)} of {report.tiles} tile(s) failed; the other tiles are kept, so a rerun "
            f"redoes only these after the cause is fixed:\n{listed}",
            report.dead,
        )
    return report


def run_job(backend: Backend, groups: list[PreparedGroup], *, layout: DatasetLayout, settings: Settings,
            job_id: str, show_progress: bool = True) -> JobReport:
    """Segment the pending tiles of ``groups`` (files in the dataset); JobFailed names tiles that never completed."""
    count = sum(len(g.pending) for g in groups)
    with open_job(backend, layout=layout, settings=settings, job_id=job_id, workers=min(settings.workers, count),
                  show_progress=show_progress) as job:
        for prepared in groups:
            job.send(prepared.group, [(i, layout.tile_source(prepared.group, i)) for i in prepared.pending])
        job.seal()
        job.wait()
    return raise_for_lost_tiles(job.report())
