"""Reforking, the supervisor's side: promote a warm worker to template, roll the next
generation out of it, adopt the workers it forks.

Theory of operation
-------------------
`refork_after = [N1, N2, ...]`: when a worker of the current generation has served
N1 requests, it is promoted (its slot's stop flag set to `PROMOTE`; dispatch mode
stops handing it connections); the next refork waits for a worker of the next
generation to serve N2, and so on.  A promotion waits until the generation is
complete and announced ("N workers ready"): a slot shows IDLE before the worker's
READY arrives, and a worker promoted in between would leave the generation one
short when that READY is read, so it would never be announced.  `sockherd ctl
refork` promotes the busiest worker by hand.  While a promotion is pending the
pool holds its spawns (the promoted worker is not replaced from the cold
supervisor).

When the worker answers `t` (it is the template) the pool starts a new generation
(`WorkerPool.reload()`): from then on every spawn of that generation is an order to
the template (see `workers.template`), and the old generation drains as new workers
report ready -- the readiness gate of a HUP.  A previous template is stopped.

An ordered worker is in `pool.workers` at once, with pid 0, so the pool counts it;
its pid arrives in its slot with a `p` on its channel, and only then does the
reaper watch it (a pidfd: the pid is the supervisor's child by then, re-parented
to it as child subreaper).  An order unanswered for `ADOPT_TIMEOUT` seconds (the
template died, or its fork failed) gives the slot back and counts a boot failure.
If the template dies, spawns go back to the supervisor's own fork (one log line).

Reforking needs pidfds and PR_SET_CHILD_SUBREAPER (Linux); elsewhere the pool keeps
forking from the supervisor and says so once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from ..server.child_watch import pidfd_supported
from ..workers.lifecycle import WorkerState
from ..workers.template import ORDER, PID_WRITTEN, PROMOTE, TEMPLATE_READY
from .spawner import WorkerHandle
from .subreaper import become_subreaper
from .worker_process import AdoptedProcess

if TYPE_CHECKING:
    from .worker_pool import WorkerPool

log = logging.getLogger(__name__)

ADOPT_TIMEOUT = 10.0


class Reforker:
    """One pool's reforking: thresholds, the template, the orders and adoptions."""

    def __init__(self, pool: WorkerPool, thresholds: tuple[int, ...]) -> None:
        self.pool = pool
        self.thresholds = list(thresholds)
        self.promoting: WorkerHandle | None = None
        self.template: WorkerHandle | None = None
        self.ordered: dict[int, float] = {}  # slot index -> when ordered (pid unknown)
        self.reforks = 0
        self._own_reload = False
        self._unsupported_noted = False

    @property
    def ready(self) -> bool:
        """Whether spawns of the current generation go to the template."""
        template = self.template
        return template is not None and template.index in self.pool.workers

    def holding(self) -> bool:
        """A promotion is pending: do not replace the promoted worker from the supervisor."""
        return self.promoting is not None

    def supported(self) -> bool:
        """Linux with pidfds and a child subreaper; notes once where not."""
        if pidfd_supported() and become_subreaper():
            return True
        if not self._unsupported_noted:
            self._unsupported_noted = True
            log.info("reforking needs Linux pidfds and a child subreaper: workers fork as before")
        return False

    # --- promotion ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Promote a worker past the next threshold; give up on orders never answered."""
        for index, ordered_at in list(self.ordered.items()):
            if now - ordered_at > ADOPT_TIMEOUT:
                log.warning("worker %d: the template never started it; giving up", index)
                del self.ordered[index]
                self.pool.worker_exited(index, 1 << 8)  # counted as exit 1
        if self.promoting is not None or not self.thresholds or self.pool.reloading:
            return  # one refork at a time: the last one's generation is complete first
        if not self.pool.announce_readiness():
            return  # and announced ("N workers ready") before a worker leaves it
        threshold = self.thresholds[0]
        for handle in self.pool.current():
            if handle.pid and self.pool.scoreboard.slots[handle.index].requests >= threshold:
                self.promote(handle, f"it served {threshold} requests")
                return

    def refork_now(self) -> str:
        """`ctl refork`: promote the current generation's busiest worker; a reply line."""
        if self.promoting is not None or self.pool.reloading or not self.pool.announce_readiness():
            return "error: a refork or reload is in progress"
        candidates = [h for h in self.pool.current() if h.pid]
        if not candidates:
            return "error: no worker to promote"
        slots = self.pool.scoreboard.slots
        handle = max(candidates, key=lambda h: slots[h.index].requests)
        if not self.promote(handle, "ctl refork"):
            return "error: reforking is not supported here"
        return f"ok: worker {handle.index} (pid {handle.pid}) becomes the template"

    def promote(self, handle: WorkerHandle, why: str) -> bool:
        """Ask `handle`'s worker to become the template (after its request in hand)."""
        if not self.supported():
            self.thresholds.clear()
            return False
        self.promoting = handle
        self.pool.scoreboard.slots[handle.index].stop = PROMOTE
        if self.pool.dispatcher is not None:
            self.pool.dispatcher.forget(handle.index)
        log.info(
            "refork: worker %d (pid %d) becomes the template (%s)", handle.index, handle.pid, why
        )
        return True

    # --- events from the channels ------------------------------------------------------

    def on_event(self, index: int, event: int) -> bool:
        """A byte from worker `index`'s channel; True if it was reforking's."""
        if event == TEMPLATE_READY[0]:
            self._template_ready(index)
            return True
        if event == PID_WRITTEN[0]:
            self._adopt(index)
            return True
        return False

    def _template_ready(self, index: int) -> None:
        handle = self.pool.workers.get(index)
        if handle is None or self.promoting is None or self.promoting.index != index:
            return
        self.promoting = None
        previous, self.template = self.template, handle
        if previous is not None and previous.index in self.pool.workers:
            self.pool.stop_worker(previous)
        if self.thresholds:
            self.thresholds.pop(0)
        self.reforks += 1
        self._own_reload = True
        try:
            self.pool.reload()
        finally:
            self._own_reload = False

    def is_template(self, handle: WorkerHandle) -> bool:
        """Whether `handle` is the template (it serves nothing: not old, not current)."""
        return self.template is handle or self.promoting is handle

    def reloaded(self) -> None:
        """A new generation starts: unless it is a refork's, the next workers fork from the
        supervisor again (HUP restarts workers fresh) and the template is retired."""
        if self._own_reload or self.template is None:
            return
        template, self.template = self.template, None
        if template.index in self.pool.workers:
            self.pool.stop_worker(template)

    def _adopt(self, index: int) -> None:
        handle = self.pool.workers.get(index)
        if handle is None or index not in self.ordered:
            return
        del self.ordered[index]
        pid = int(self.pool.scoreboard.slots[index].pid)
        try:
            exit_fd = os.pidfd_open(pid)
        except OSError:  # gone already (reaped as an orphan): count it, free its slot
            log.warning("worker %d: cannot watch pid %d; it is not adopted", index, pid)
            self.pool.worker_exited(index, 1 << 8)  # as exit 1
            return
        handle.pid = handle.process.pid = pid
        handle.started_at = time.monotonic()
        self.pool.reaper.watch(
            pid, exit_fd, True, lambda status: self.pool.worker_exited(index, status)
        )

    def worker_gone(self, index: int) -> None:
        """Worker `index` was reaped (or given up on)."""
        self.ordered.pop(index, None)
        if self.promoting is not None and self.promoting.index == index:
            self.promoting = None
            log.warning("refork: the worker being promoted ended; no refork this time")
        if self.template is not None and self.template.index == index:
            self.template = None
            if not self.pool.stop_told:
                log.warning("refork: the template ended; new workers fork from the supervisor")

    def forget_orders(self) -> None:
        """The pool stops at once: count unanswered orders as ended (nothing to reap)."""
        for index in list(self.ordered):
            self.pool.worker_exited(index, 9)  # as if SIGKILLed

    # --- spawning through the template -------------------------------------------------

    def order(self, generation: int) -> WorkerHandle | None:
        """Have the template fork one worker of `generation`; its handle (pid 0 until adopted)."""
        assert self.template is not None
        scoreboard = self.pool.scoreboard
        index = scoreboard.claim(generation)
        if index is None:
            return None
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(
                self.template.channel, [ORDER.pack(b"s", index, generation)], [child_end.fileno()]
            )
        except OSError as error:
            parent_end.close()
            scoreboard.release(index)
            log.warning("refork: the template does not take orders (%s)", error.strerror)
            self.template = None
            return None
        finally:
            child_end.close()
        parent_end.setblocking(False)
        self.ordered[index] = time.monotonic()
        return WorkerHandle(index, 0, AdoptedProcess(0), parent_end, generation)

    def template_state(self) -> WorkerState | None:
        """The template's scoreboard state, or None without a template."""
        if self.template is None:
            return None
        return self.pool.scoreboard.state(self.template.index)
