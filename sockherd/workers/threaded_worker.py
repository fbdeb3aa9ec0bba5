"""A prefork worker with a pool of threads: up to `threads` connections at once.

Theory of operation
-------------------
With `threads` = 1 (the default) a worker is the synchronous `worker_loop.Worker`
and this module is not used.  With `threads` = N > 1 the worker's main thread
still takes the connections (accept mode: accept() on the shared listener;
dispatch mode: the connections the supervisor passes on the channel) but hands
each to one of N long-lived request threads through a queue, and never runs a
handler itself.

* **A free thread first.**  A semaphore counts the free threads.  In accept mode
  the main thread takes one (waiting at most `heartbeat_interval`, then beating
  and looking at the stop flag) *before* it calls accept(), so a worker whose
  threads are all busy leaves the listen backlog to the other workers.  In
  dispatch mode a credit is a free thread: the worker sends `r` and N - 1 `i`
  bytes when it is ready, one `i` each time a thread is free again, and the
  supervisor hands a connection to the worker with the most credits.
* **The scoreboard.**  Each request is counted as in a sync worker (`begin_request`,
  `record_request`), under one lock, so counters and histograms stay exact.  The
  slot also shows the pool size, the busy threads, and the start of the oldest
  request in hand (`oldest_request`): the worker is BUSY while any thread is, and
  `worker_timeout` measures its oldest request.  A worker killed for it loses its
  other requests in hand too: the supervisor counts them as `aborted`
  (`Scoreboard.requests_in_hand`).
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
  a graceful stop or a reload waits for every thread's request, within the
  supervisor's graceful_timeout.  A worker that reached `max_requests` sends no
  more credits either.
"""

from __future__ import annotations

import queue
import select
import signal
import threading
import time
from typing import Any

from ..server.read_deadline import outcome_of_failure
from .lifecycle import WorkerState
from .worker_loop import IDLE, Worker, resident_memory

_Job = tuple[Any, Any] | None  # (request, client_address), or None: the thread ends


class ThreadedWorker(Worker):
    """A worker that serves up to `threads` requests at once (see the module)."""

    def __init__(self, *args: Any, threads: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads = threads
        self.lock = threading.Lock()  # guards the scoreboard slot and `in_hand`
        self.free = threading.Semaphore(threads)  # threads free to take a request
        self.holding = False  # the main thread holds one free thread for the next request
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.pool: list[threading.Thread] = []
        self.in_hand: dict[int, float] = {}  # request number -> monotonic start
        self.taken = 0  # requests taken in hand (what max_requests counts)
        self.taking = True  # the main thread takes connections (dispatch: send credits)
        self.ended_by: BaseException | None = None  # a handler's SystemExit, KeyboardInterrupt

    # --- the pool ------------------------------------------------------------------

    def start_threads(self) -> None:
        """Start the request threads and show the pool in the scoreboard."""
        slot = self.scoreboard.slots[self.index]
        slot.threads = self.threads
        slot.busy_threads = 0
        for number in range(self.threads):
            thread = threading.Thread(
                target=self.request_thread, name=f"sockherd-request-{number}", daemon=True
            )
            thread.start()
            self.pool.append(thread)

    def stop_threads(self) -> None:
        """Let every thread finish its request, then end them all."""
        if self.holding:
            self.holding = False
            self.free.release()
        for _ in self.pool:
            self.jobs.put(None)
        for thread in self.pool:
            thread.join()
        self.pool.clear()

    def request_thread(self) -> None:
        """One request thread: serve jobs from the queue until its sentinel."""
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
                self.free.release()
                if self.handoff == "dispatch" and self.taking:
                    self.tell(IDLE)  # one more credit: a thread is free

    def take_free_thread(self, timeout: float | None) -> bool:
        """Hold a free thread for the next request; False if none freed within `timeout`."""
        if not self.holding:
            self.holding = self.free.acquire(timeout=timeout)
        return self.holding

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
        """accept mode: accept only while a thread is free; hand each connection to it."""
        self.start_threads()
        try:
            while not self.should_stop():
                if self.take_free_thread(self.heartbeat_interval):
                    self.accept_one()
            if self.scoreboard.header.draining:
                self.drain_backlog()
        finally:
            self.stop_threads()

    def drain_backlog(self) -> None:
        """Take the connections already queued when the whole server stops."""
        poller = select.poll()
        poller.register(self.server.socket.fileno(), select.POLLIN)
        while poller.poll(0):
            self.take_free_thread(None)
            if not self.accept_one(wait=False):
                return

    def dispatched_loop(self) -> None:
        """dispatch mode: one credit per free thread; serve what the supervisor passes."""
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
        """Hand one request to a free thread (the main thread's side)."""
        self.take_free_thread(None)  # dispatch: a credit promised one; accept: held already
        self.holding = False
        self.taken += 1
        if self.request_limit and self.taken >= self.request_limit:
            self.taking = False  # the last one: no more credits
        self.jobs.put((request, client_address))

    # --- a request thread ----------------------------------------------------------

    def serve_in_thread(self, request: Any, client_address: Any) -> None:
        """Run the handler on one request, as a synchronous server would, in this thread."""
        began = time.monotonic()
        key = id(request)
        self.begin(key, began)
        outcome = "ok"
        try:
            self.server.finish_request(request, client_address)
        except Exception:
            outcome = outcome_of_failure(request)
            self.server.handle_error(request, client_address)
        finally:
            # Count before the connection closes, as a sync worker does.
            with self.lock:
                self.scoreboard.record_request(self.index, time.monotonic() - began, outcome)
                self.served += 1
            try:
                self.server.shutdown_request(request)
                if self.memory_limit and resident_memory() > self.memory_limit:
                    self.over_memory_limit = True
            finally:
                self.end(key)

    def begin(self, key: int, began: float) -> None:
        """Show one more request in hand in the scoreboard."""
        slot = self.scoreboard.slots[self.index]
        with self.lock:
            first = not self.in_hand
            self.in_hand[key] = began
            slot.busy_threads = len(self.in_hand)
            if first:
                slot.oldest_request = began
                self.scoreboard.set_state(self.index, WorkerState.BUSY)
            self.scoreboard.begin_request(self.index)

    def end(self, key: int) -> None:
        """Show one request fewer in hand; the worker is IDLE when none is left."""
        slot = self.scoreboard.slots[self.index]
        with self.lock:
            del self.in_hand[key]
            slot.busy_threads = len(self.in_hand)
            slot.oldest_request = min(self.in_hand.values(), default=0.0)
            if not self.in_hand:
                self.scoreboard.set_state(self.index, WorkerState.IDLE)


def make_worker(server: Any, *args: Any) -> Worker:
    """The worker for `server`: a `ThreadedWorker` if its `threads` setting is above 1,
    else the synchronous `Worker` (arguments: those of `Worker`)."""
    threads = getattr(server, "threads", 1) or 1
    if threads > 1:
        return ThreadedWorker(server, *args, threads=threads)
    return Worker(server, *args)
