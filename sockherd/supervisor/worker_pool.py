"""One prefork server's pool of workers: keep `desired` of them alive, and change that.

Theory of operation (after gunicorn's arbiter)
----------------------------------------------
The pool lives inside the supervisor's serve loop.  Each worker adds two wake
sources: its exit fd, which the Arbiter's one reaper (`reaper`) watches and turns
into `worker_exited()`, and its channel, on which it reports `r` (ready) and `i`
(idle again, dispatch mode).  The Arbiter calls `tick()` when something changed
(an exit, a READY, a command) or every `HOUSEKEEPING_INTERVAL` seconds:

* `enforce_timeouts()` kills workers stuck past `worker_timeout` (`worker_timeouts`);
* `reconcile()` (gunicorn's `manage_workers`) forks until the current generation
  has `desired` live workers, stops surplus ones (idle first), and during a reload
  stops one old worker for each new one that is ready;
* while the pool stops, `drain_step()` instead hands out the dispatch backlog,
  tells the workers to stop and, past `graceful_timeout`, kills what is left.

Each piece of state has one owner: a worker's state and counters live in its
scoreboard slot (`workers.lifecycle` says which moves are legal, and a reaped
worker's slot stays DEAD until it is reused); the pool owns `desired`, the current
`generation` and the process handles; the spawner owns the start back-off; the
dispatcher owns the hand-off credits; `worker_exits` says why a worker ended.
"""

from __future__ import annotations

import collections
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..workers.lifecycle import WorkerState
from ..workers.proc_stats import ProcessReadings
from ..workers.scoreboard import Scoreboard
from ..workers.worker_loop import READY, set_listener_heartbeat
from .dispatcher import Dispatcher
from .pool_autoscale import PoolAutoscale
from .pool_exits import OomWatch, worker_exited
from .pool_memory import PoolMemory
from .pool_settings import PoolSettings
from .pool_snapshot import pool_snapshot
from .reaper import ChildReaper
from .refork import Reforker
from .slow_requests import SlowRequests
from .spawner import Spawner, WorkerHandle, exit_fd_of
from .worker_timeouts import enforce_timeouts, kill_group, send_signal

if TYPE_CHECKING:
    from ..metrics.snapshot import ExitRecord, PoolSnapshot
    from .pool_settings import PreforkServer

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 0.05  # seconds between tick()s while nothing changes
READINGS_WATCH = 10.0  # seconds after a status or scrape during which readings stay fresh
READINGS_BUDGET = 0.003  # seconds of /proc reading per tick() while watched


class WorkerPool:
    """The workers of one prefork server, driven from the supervisor's serve loop."""

    def __init__(
        self,
        server: PreforkServer,
        settings: PoolSettings,
        reaper: ChildReaper,
        on_child_reaped: Callable[[int], None],
        scoreboard: Scoreboard | None = None,
    ) -> None:
        self.server = server
        self.settings = settings
        self.reaper = reaper
        self.on_child_reaped = on_child_reaped
        self.desired = settings.workers
        self.max_workers = max(settings.max_workers, self.desired)
        # Room for a reload's new generation; an upgrade brings the old image's scoreboard.
        self.scoreboard = scoreboard or Scoreboard(2 * self.max_workers)
        self.spawner = Spawner(server, self.scoreboard, settings.handoff)
        dispatch = settings.handoff == "dispatch"
        self.dispatcher = Dispatcher(self.scoreboard, settings.threads) if dispatch else None
        self.generation = 0
        self.workers: dict[int, WorkerHandle] = {}
        self.exit_counts: collections.Counter[str] = collections.Counter()
        self.restarts: collections.Counter[str] = collections.Counter()
        self.exit_causes: collections.Counter[str] = collections.Counter()
        self.last_exits: dict[int, ExitRecord] = {}  # per slot
        self.readings = ProcessReadings()
        self.watched_until = 0.0  # a status or scrape looked: keep readings fresh until then
        self.readings_fresh = True
        self.oom = OomWatch()
        self.slow = SlowRequests.of(settings)
        self.max_workers_reached = 0
        self._all_busy = False
        self.boot_failures = 0
        self.stop_deadline: float | None = None  # set by begin_stop()
        self.stop_told = False  # every worker has been told to stop
        self.killed = False  # graceful_timeout expired: what was left got SIGKILL
        self.announced_ready: tuple[int, int] | None = None  # (generation, desired) logged
        self.tick_due = True
        self.next_tick = 0.0
        self.closed = False
        self.memory = PoolMemory(self.readings)
        self.autoscale_decisions: collections.Counter[str] = collections.Counter()
        self.autoscaler = PoolAutoscale(self) if settings.autoscale else None
        self.reforker = Reforker(self, settings.refork_after)
        if settings.handoff == "accept":
            set_listener_heartbeat(server.socket, settings.heartbeat_interval)

    # --- workers coming and going -------------------------------------------------------

    def spawn(self) -> WorkerHandle | None:
        """Fork one worker of the current generation and watch it (or order it from the
        template, which reports its pid later: `refork`)."""
        ordered = self.reforker.ready
        handle = (
            self.reforker.order(self.generation) if ordered else self.spawner.spawn(self.generation)
        )
        if handle is None:
            return None
        self.watch(handle, *((None, False) if ordered else exit_fd_of(handle.process)))
        return handle

    def watch(self, handle: WorkerHandle, exit_fd: int | None, owns_exit_fd: bool) -> None:
        """Take `handle` into the pool: the reaper watches its exit fd, the loop its channel."""
        index = handle.index
        self.workers[index] = handle
        if exit_fd is not None:  # None: ordered from the template, watched once it has a pid
            self.reaper.watch(
                handle.pid, exit_fd, owns_exit_fd, lambda status: self.worker_exited(index, status)
            )
        if handle.channel_open:
            self.server.add_wake_source(handle.channel.fileno(), lambda: self.on_message(index))

    def on_message(self, index: int) -> None:
        """The worker's channel is readable: ready/idle events, or EOF as it exits."""
        handle = self.workers.get(index)
        if handle is None:
            return
        try:
            data = handle.channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            handle.channel_open = False
            self.server.remove_wake_source(handle.channel.fileno())
            return
        for event in data:
            if self.reforker.on_event(index, event):
                continue
            if event == READY[0]:
                self.boot_failures = 0
                self.tick_due = True  # a reload may stop an old worker now
                self.announce_readiness()
            if self.dispatcher is not None and not self.scoreboard.slots[index].stop:
                self.dispatcher.worker_idle(index)

    def announce_readiness(self) -> bool:
        """Log "N workers ready" once each time the current generation becomes complete;
        return whether it has been (reforking asks before it takes a worker out of it)."""
        ready = self.ready_count()
        if ready >= self.desired and self.announced_ready != (self.generation, self.desired):
            self.announced_ready = (self.generation, self.desired)
            log.info("%d worker%s ready", ready, "" if ready == 1 else "s")
        return self.announced_ready == (self.generation, self.desired)

    def worker_exited(self, index: int, status: int | None) -> None:
        """The reaper took this worker's exit status: see `pool_exits.worker_exited`."""
        worker_exited(self, index, status)

    # --- housekeeping -------------------------------------------------------------------

    def housekeeping_due(self, now: float) -> bool:
        """Whether tick() should run now: something changed, the interval has passed, or a
        request has become slow."""
        if self.tick_due or now >= self.next_tick:
            return True
        due = self.next_wake()
        return due is not None and now >= due

    def next_wake(self) -> float | None:
        """The monotonic time the loop must run tick() by: a request about to become
        slow, or the next batch of /proc readings while someone watches."""
        wakes = []
        if self.slow is not None:
            wakes.append(self.slow.next_deadline(self.scoreboard, self.workers))
        if not self.readings_fresh:
            wakes.append(self.next_tick)
        return min((w for w in wakes if w is not None), default=None)

    def refresh_readings(self, budget: float, watched: bool = False) -> None:
        """Re-read stale /proc figures of live workers for about `budget` seconds; a
        `watched` call (a status or scrape) keeps housekeeping refreshing for 10 s."""
        now = time.monotonic()
        if watched:
            self.watched_until = now + READINGS_WATCH
        elif now >= self.watched_until:
            self.readings_fresh = True
            return
        pids = [handle.pid for handle in self.workers.values()]
        if watched:  # a status request reads only workers never read; housekeeping the rest
            self.readings.refresh(pids, budget, only_new=True)
            self.readings_fresh = False
            return
        self.readings_fresh = self.readings.refresh(pids, budget)

    def tick(self, now: float) -> None:
        """Enforce timeouts, then drain, or autoscale and bring the pool to its shape."""
        self.tick_due = False
        self.next_tick = now + HOUSEKEEPING_INTERVAL
        enforce_timeouts(
            list(self.workers.values()),
            self.scoreboard,
            self.settings.worker_timeout,
            self.settings.kill_grace,
            now,
        )
        if self.slow is not None:
            self.slow.check(self.scoreboard, list(self.workers.values()), now)
        self._note_saturation()
        if not self.readings_fresh or now < self.watched_until:
            self.refresh_readings(READINGS_BUDGET)
        if self.stop_deadline is not None:
            self.drain_step(now)
            return
        if self.autoscaler is not None:
            self.autoscaler.tick(now)
        self.reforker.tick(now)
        self.reconcile(now)

    def _note_saturation(self) -> None:
        """Count each episode of every worker busy at once (php-fpm's "max children
        reached"), as housekeeping sees it: an episode shorter than a tick may be missed."""
        current = self.current()
        saturated = bool(current) and all(self._state(h) == WorkerState.BUSY for h in current)
        if saturated and not self._all_busy:
            self.max_workers_reached += 1
        self._all_busy = saturated

    def current(self) -> list[WorkerHandle]:
        """Live workers of the current generation not told to stop."""
        return [
            h
            for h in self.workers.values()
            if h.generation == self.generation and not self.scoreboard.slots[h.index].stop
        ]

    def ready_count(self) -> int:
        """Workers of the current generation that have booted and serve."""
        serving = (WorkerState.IDLE, WorkerState.BUSY)
        return sum(1 for h in self.current() if self._state(h) in serving)

    @property
    def reloading(self) -> bool:
        """A reload is in progress: old workers still run, or new ones are not all ready."""
        old = any(
            h.generation != self.generation and not self.reforker.is_template(h)
            for h in self.workers.values()
        )
        return old or self.ready_count() < self.desired

    def reconcile(self, now: float) -> None:
        """Spawn or stop workers until the current generation has `desired` of them."""
        current = self.current()
        missing = 0 if self.reforker.holding() else self.desired - len(current)
        while missing > 0 and self.spawner.may_spawn(time.monotonic()):
            if self.spawn() is None:
                break
            missing -= 1
            if self.boot_failures:
                break  # after a boot failure start one at a time, each after the back-off
        if missing < 0:
            surplus = sorted(current, key=lambda h: (self._state(h) != WorkerState.IDLE, -h.index))
            for handle in surplus[:-missing]:
                self.stop_worker(handle)
        old = [h for h in self.workers.values() if h.generation != self.generation]
        running_old = [h for h in old if not self.scoreboard.slots[h.index].stop]
        excess = self.ready_count() + len(running_old) - self.desired
        for handle in running_old[: max(0, excess)]:
            self.stop_worker(handle)

    def stop_worker(self, handle: WorkerHandle) -> None:
        """Ask one worker to finish its request and exit (its stop flag, and SIGTERM)."""
        self.scoreboard.slots[handle.index].stop = 1
        if self.dispatcher is not None:
            self.dispatcher.forget(handle.index)
        send_signal(handle.pid, signal.SIGTERM)

    def _state(self, handle: WorkerHandle) -> WorkerState:
        return self.scoreboard.state(handle.index)

    # --- operator commands ----------------------------------------------------------------

    def scale_to(self, count: int) -> int:
        """Set the desired worker count, bounded by min_workers..max_workers; return it.
        Only an autoscaled pool may have min_workers 0 (scale to zero)."""
        self.desired = min(max(count, self.settings.min_workers), self.max_workers)
        self.tick_due = True
        log.debug("desired workers: %d", self.desired)
        return self.desired

    def scale_by(self, delta: int) -> int:
        """TTIN/TTOU: `delta` workers more or less, within min_workers..max_workers."""
        return self.scale_to(self.desired + delta)

    def reload(self) -> None:
        """HUP: start a new generation; old workers drain as new ones report ready."""
        self.generation += 1
        self.reforker.reloaded()
        self.tick_due = True
        log.info("reloading: starting generation %d", self.generation)

    # --- stopping -------------------------------------------------------------------------

    def begin_stop(self, graceful: bool, now: float) -> None:
        """Stop the pool: graceful, requests in progress (and, accept mode, the backlog the
        workers drain themselves) finish within graceful_timeout; else workers are killed.
        Dispatch mode tells its workers once the backlog is handed out (`drain_step`)."""
        if self.stop_deadline is not None:
            if not graceful:
                self._kill_remaining()
            return
        self.scoreboard.header.draining = 1
        self.stop_deadline = now + (self.settings.graceful_timeout if graceful else 0)
        self.tick_due = True
        if not graceful:
            self._kill_remaining()
        elif self.dispatcher is None:
            self._tell_all_to_stop()

    def drain_step(self, now: float) -> None:
        """One step of a stop: hand out the backlog, tell workers, kill past the deadline."""
        assert self.stop_deadline is not None
        if not self.stop_told and not (self.server.backlog_waiting() and self.workers):
            self._tell_all_to_stop()
        if now >= self.stop_deadline and self.workers and not self.killed:
            for handle in self.workers.values():
                log.warning(
                    "worker %d (pid %d) still running after graceful_timeout=%s s: SIGKILL",
                    handle.index,
                    handle.pid,
                    self.settings.graceful_timeout,
                )
            self._kill_remaining()

    @property
    def stopped(self) -> bool:
        """The pool was told to stop and every worker has been reaped."""
        return self.stop_deadline is not None and not self.workers

    def accepting(self) -> bool:
        """Dispatch mode: whether the supervisor should accept now (an idle worker waits)."""
        if self.dispatcher is None or self.stop_told:
            return False
        return self.dispatcher.has_idle_worker()

    def _tell_all_to_stop(self) -> None:
        self.stop_told = True
        for handle in list(self.workers.values()):
            self.stop_worker(handle)

    def _kill_remaining(self) -> None:
        self.stop_told = self.killed = True
        for handle in list(self.workers.values()):
            self.scoreboard.slots[handle.index].stop = 1
            kill_group(handle.pid, signal.SIGKILL)

    def kill_and_reap_all(self) -> None:
        """Outside the loop (it ended early): kill every worker and wait until all are reaped."""
        self.begin_stop(graceful=False, now=time.monotonic())
        self.reforker.forget_orders()
        while self.workers:
            self.reaper.wait(None)

    def snapshot(self) -> PoolSnapshot:
        """The pool as the public snapshot describes it."""
        return pool_snapshot(self)

    def close(self) -> None:
        """Release the scoreboard once no worker is left."""
        self.closed = True
        if self.slow is not None:
            self.slow.close()
        if self.autoscaler is not None:
            self.autoscaler.close()
        self.scoreboard.close()
