"""A prefork worker with a pool of threads: up to `threads` requests at once.

Theory of operation
-------------------
With `threads` = 1 (the default) a worker is the synchronous `worker_loop.Worker`
and this module is not used.  With `threads` = N > 1 the worker's main thread
still takes the connections (accept mode: accept() on the shared listener;
dispatch mode: the connections the supervisor passes on the channel) but hands
each to a request thread through a queue, and never runs a handler itself.

* **Busy and parked.**  A connection is *busy* while its thread runs the handler,
  and *parked* while its thread waits for the client's next bytes (a kept-alive
  HTTP connection between two requests; see `client_wait`).  N bounds the busy
  ones; `worker_connections` bounds all of them, parked included.  So 64
  keep-alive clients on 4 workers of 8 threads are all served: each worker holds
  16 connections, of which at most 8 run at once.  A parked connection holds an
  idle thread (blocked in `recv`, no CPU); threads are started as connections
  need them and end when more than N would be idle.
* **Room first.**  In accept mode the main thread waits (at most
  `heartbeat_interval`, then beats and looks at the stop flag) until fewer than N
  connections are busy and fewer than `worker_connections` are held, *before* it
  calls accept(), so a worker without room leaves the listen backlog to the other
  workers.  Past N connections held it also leaves the next one to any serving
  worker with room that holds fewer (read from the scoreboard, looked at again
  every `FAIR_RECHECK`): otherwise the worker the kernel wakes first would gather
  every kept-alive connection and its one GIL would serve them all.  Not where the
  pool may use one CPU only (its cgroup quota or affinity, `pool_sizing`): one core
  runs one GIL at a time wherever the connections are, so there a deferral would only
  leave a new connection waiting in the backlog.  In dispatch mode a credit is a
  busy place free: the worker sends `r` and N - 1 `i` bytes when it is ready and
  one `i` each time a request ends, and the supervisor hands
  a connection to the worker with the most credits; there a connection does not
  park (a credit per park would need one back per unpark), so a kept-alive
  connection holds its place as in a sync worker.
* **The scoreboard.**  Each request (a connection, as socketserver counts them) is
  counted as in a sync worker (`begin_request`, `record_request`), under one lock,
  so counters and histograms stay exact.  The slot also shows the pool size, the
  busy connections, and when the oldest busy one last became busy
  (`oldest_request`): the worker is BUSY while any connection is, and
  `worker_timeout` measures the handler's work since it last waited for its
  client (per request on a keep-alive connection; `read_timeout` bounds the
  client's side).  A worker killed for it loses its other connections too: the
  supervisor counts them as `aborted` (`Scoreboard.requests_in_hand`).
* **Limits.**  `max_requests` counts requests taken in hand: once reached the
  worker accepts no more, lets the running ones finish and exits.  `read_timeout`
  applies to each connection, so a slow client holds one thread only.
* **A handler's SystemExit or KeyboardInterrupt** ends the worker, as in a sync
  worker, but gracefully: the worker stops taking connections, the other threads
  finish their requests, then the main thread raises it (the exit status says so
  and the supervisor replaces the worker).  A connection the main thread was
  already accepting is still served.
* **Stopping.**  When told to stop the main thread stops taking connections (an
  accept-mode worker of a stopping server first takes what waits in the backlog,
  a dispatch-mode worker what was already passed to it, and sends no more
  credits), then puts one sentinel per thread in the queue and joins every thread:
  a graceful stop or a reload waits for every connection, parked ones included,
  within the supervisor's graceful_timeout.  A worker that reached `max_requests`
  sends no more credits either.
"""

from __future__ import annotations

import queue
import select
import signal
import threading
import time
from typing import Any

from ..server.read_deadline import outcome_of_failure
from .client_wait import enable_parking, serve_with_parking
from .lifecycle import WorkerState
from .worker_loop import IDLE, Worker, resident_memory

_Job = tuple[Any, Any] | None  # (request, client_address), or None: the thread ends
_BUSY, _IDLE = int(WorkerState.BUSY), int(WorkerState.IDLE)
_SERVING = (_IDLE, _BUSY)
FAIR_RECHECK = 0.01  # seconds between looks at the other workers while leaving them a turn

DEFAULT_WORKER_CONNECTIONS = 1000  # as gunicorn's gthread worker


class ThreadedWorker(Worker):
    """A worker that serves up to `threads` requests at once (see the module)."""

    def __init__(
        self,
        *args: Any,
        threads: int,
        connections: int = DEFAULT_WORKER_CONNECTIONS,
        usable_cpus: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.threads = threads
        self.max_connections = max(connections, threads)
        self.usable_cpus = usable_cpus  # 0: not known (connections are spread)
        self.lock = threading.Lock()  # guards everything below and the scoreboard slot
        self.changed = threading.Condition(self.lock)  # a connection parked or ended
        self.busy = 0  # connections whose thread runs (the main thread's reservation included)
        self.held = 0  # connections in hand, parked ones included
        self.idle_threads = 0  # threads waiting for a job and not yet promised one
        self.holding = False  # the main thread holds a place for the next connection
        self.main_waits = False  # the main thread waits for room (parking notifies it)
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.pool: list[threading.Thread] = []
        self.in_hand: dict[int, float] = {}  # busy connection -> monotonic time it became busy
        self.taken = 0  # requests taken in hand (what max_requests counts)
        self.taking = True  # the main thread takes connections (dispatch: send credits)
        self.ended_by: BaseException | None = None  # a handler's SystemExit, KeyboardInterrupt

    def own_settings(self) -> dict[str, Any]:
        """The pool's size, the connection limit and the usable CPUs (see `Worker.twin`)."""
        return dict(
            threads=self.threads, connections=self.max_connections, usable_cpus=self.usable_cpus
        )

    # --- the pool ------------------------------------------------------------------

    def start_threads(self) -> None:
        """Start N request threads and show the pool in the scoreboard."""
        slot = self.scoreboard.slots[self.index]
        slot.threads = self.threads
        slot.busy_threads = 0
        for _ in range(self.threads):
            self.start_thread()

    def start_thread(self, idle: bool = True) -> None:
        """One more request thread: idle, or (`idle` False) for the job just queued."""
        if idle:
            with self.lock:
                self.idle_threads += 1
        self.pool = [thread for thread in self.pool if thread.is_alive()]
        thread = threading.Thread(
            target=self.request_thread, name=f"sockherd-request-{len(self.pool)}", daemon=True
        )
        thread.start()
        self.pool.append(thread)

    def stop_threads(self) -> None:
        """Let every thread finish its connection, then end them all."""
        with self.lock:
            if self.holding:
                self.holding = False
                self.busy -= 1
                self.held -= 1
        threads = list(self.pool)
        for _ in threads:
            self.jobs.put(None)
        for thread in threads:
            thread.join()
        self.pool.clear()

    def request_thread(self) -> None:
        """One request thread: serve jobs from the queue until its sentinel, or until more
        than N threads would be idle."""
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                self.serve_in_thread(*job)
            except BaseException as error:  # SystemExit or KeyboardInterrupt from a handler
                # It ends the worker, as in a sync worker, once the other requests finish.
                if self.ended_by is None:
                    self.ended_by = error
                self._on_sigterm(signal.SIGTERM, None)
            finally:
                with self.lock:
                    self.busy -= 1
                    self.held -= 1
                    if self.main_waits:
                        self.changed.notify()
                    surplus = self.idle_threads >= self.threads
                    if not surplus:
                        self.idle_threads += 1
                if self.handoff == "dispatch" and self.taking:
                    self.tell(IDLE)  # one more credit: a place is free
            if surplus:
                return

    def take_place(self, timeout: float | None, fair: bool = True) -> bool:
        """Hold a place for the next connection (fewer than N busy, fewer than
        `worker_connections` held and, if `fair`, no other worker with room holding
        fewer where connections are spread); False if none came free within `timeout`."""
        with self.lock:
            if self.holding:
                return True
            deadline = None if timeout is None else time.monotonic() + timeout
            self.main_waits = True
            try:
                while True:
                    wait = None  # until a connection of ours parks or ends
                    if self._has_room():
                        if not fair or self._fair_to_take():
                            break
                        wait = FAIR_RECHECK  # the others' counts change without telling us
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return False
                        wait = left if wait is None else min(wait, left)
                    self.changed.wait(wait)
            finally:
                self.main_waits = False
            self.busy += 1
            self.held += 1
            self.holding = True
            return True

    def _has_room(self) -> bool:
        return self.busy < self.threads and self.held < self.max_connections

    def _fair_to_take(self) -> bool:
        """Whether this worker should take the next connection: it holds fewer than N,
        the pool may use one CPU only, or no other serving worker with room holds fewer
        (read from the scoreboard).  Without this the worker the kernel wakes first
        would take every kept-alive connection: accept mode spreads them as dispatch does."""
        mine = self.held
        if mine < self.threads or self.usable_cpus == 1:
            return True
        board = self.scoreboard
        for index in range(board.size):
            if index == self.index:
                continue
            slot = board.slots[index]
            if slot.state not in _SERVING or slot.stop or slot.busy_threads >= slot.threads:
                continue
            if board.requests_in_hand(index) < mine:
                return False
        return True

    # --- the main thread -----------------------------------------------------------

    def run(self) -> int:
        """As a sync worker's; a SystemExit or KeyboardInterrupt a handler raised in a
        request thread is raised here once every thread has finished its request."""
        status = super().run()
        if self.ended_by is not None:
            raise self.ended_by
        return status

    def should_stop(self) -> bool:
        """As a sync worker's, with max_requests counting requests taken in hand."""
        if self.request_limit and self.taken >= self.request_limit:
            return True
        return super().should_stop()

    def accept_loop(self) -> None:
        """accept mode: accept only while there is room; hand each connection to a thread."""
        self.start_threads()
        try:
            while not self.should_stop():
                if self.take_place(self.heartbeat_interval):
                    self.accept_one()
            if self.scoreboard.header.draining:
                self.drain_backlog()
        finally:
            self.stop_threads()

    def drain_backlog(self) -> None:
        """Take the connections already queued when the whole server stops."""
        while self.server.backlog_waiting():
            self.take_place(None, fair=False)
            if not self.accept_one(wait=False):
                return

    def dispatched_loop(self) -> None:
        """dispatch mode: one credit per free place; serve what the supervisor passes."""
        self.start_threads()
        self.tell(IDLE * (self.threads - 1))  # `r` was the first credit
        try:
            super().dispatched_loop()
        finally:
            self.taking = False
            self.stop_threads()
        # A credit sent just before the loop ended may have brought one more connection
        # while the threads finished: serve it here rather than drop it.
        channel_only = select.poll()
        channel_only.register(self.channel.fileno(), select.POLLIN)
        family, kind = self.server.socket.family, self.server.socket.type
        while channel_only.poll(0):
            try:
                received = self.receive_dispatched(family, kind)
            except OSError:
                return
            if received is None:
                return
            self.serve_in_thread(*received)

    def dispatched_served(self) -> None:
        """Nothing to tell: each thread sends its own credit when its request ends."""

    def serve(self, request: Any, client_address: Any) -> None:
        """Hand one connection to a request thread (the main thread's side)."""
        self.take_place(None, fair=False)  # dispatch: a credit promised one; accept: held
        with self.lock:
            self.holding = False
            if self.idle_threads:
                self.idle_threads -= 1  # that thread takes the job
                start = False
            else:
                start = True
        self.taken += 1
        if self.request_limit and self.taken >= self.request_limit:
            self.taking = False  # the last one: no more credits
        if self.handoff != "dispatch":
            request = enable_parking(request)
        self.jobs.put((request, client_address))
        if start:
            self.start_thread(idle=False)

    # --- a request thread ----------------------------------------------------------

    def serve_in_thread(self, request: Any, client_address: Any) -> None:
        """Run the handler on one request, as a synchronous server would, in this thread
        (which holds one busy place for it)."""
        began = time.monotonic()
        key = id(request)
        self.begin(key, began)
        serve_with_parking(self, key)
        outcome = "ok"
        try:
            self.server.finish_request(request, client_address)
        except Exception:
            outcome = outcome_of_failure(request)
            self.server.handle_error(request, client_address)
        finally:
            serve_with_parking(None)
            # Count before the connection closes, as a sync worker does.
            with self.lock:
                self.scoreboard.record_request(self.index, time.monotonic() - began, outcome)
                self.served += 1
            try:
                self.server.shutdown_request(request)
                if self.memory_limit and resident_memory() > self.memory_limit:
                    self.over_memory_limit = True
            finally:
                with self.lock:
                    self._not_busy(key)

    def begin(self, key: int, began: float) -> None:
        """Show one more request in hand in the scoreboard."""
        with self.lock:
            self._busy(key, began)
            self.scoreboard.begin_request(self.index)

    def park(self, key: int) -> None:
        """Connection `key` waits for its client: one busy place free (`client_wait.Waiter`).

        Run on every read that may wait, so kept short: one lock, plain stores, and a
        notification only when the main thread waits for room."""
        with self.lock:
            self._not_busy(key)
            self.busy -= 1
            if self.main_waits:
                self.changed.notify()

    def unpark(self, key: int) -> None:
        """Connection `key` has its client's bytes: busy again, at once (`client_wait.Waiter`).

        It does not wait for a free place: its client is already waiting, so N is
        briefly exceeded rather than a kept-alive request queued behind new ones."""
        now = time.monotonic()
        with self.lock:
            self.busy += 1
            self._busy(key, now)

    # The slot's busy fields, written under the lock with plain stores (IDLE <-> BUSY is
    # always legal and only this worker writes its state while it lives).

    def _busy(self, key: int, since: float) -> None:
        slot = self.slot
        in_hand = self.in_hand
        in_hand[key] = since
        slot.busy_threads = len(in_hand)
        if len(in_hand) == 1:
            slot.oldest_request = since
            slot.state = _BUSY
            slot.heartbeat = since

    def _not_busy(self, key: int) -> None:
        slot = self.slot
        in_hand = self.in_hand
        since = in_hand.pop(key)
        slot.busy_threads = len(in_hand)
        if not in_hand:
            slot.oldest_request = 0.0
            slot.state = _IDLE
            slot.heartbeat = time.monotonic()
        elif since <= slot.oldest_request:
            slot.oldest_request = min(in_hand.values())
