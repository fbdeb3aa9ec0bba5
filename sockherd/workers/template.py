"""Reforking, the worker's side: a warm worker becomes the template the next workers fork from.

Theory of operation (after Shopify's Pitchfork)
-----------------------------------------------
A worker's pages stay shared with its siblings only as long as they hold what the
supervisor held at fork time; what each worker builds afterwards (lazy imports,
caches) is private to each.  Reforking forks the next workers from a warm one, so
they share its warm pages too.

1. The supervisor sets the worker's slot `stop` flag to `PROMOTE` (2).  The worker
   finishes its request, leaves its loop and calls `run_template()`: it moves to
   STOPPING, freezes its heap (`gc.freeze()`: the children's collections must not
   touch it) and tells the supervisor `t` on its channel.
2. For each new worker the supervisor claims a slot, makes a channel pair and sends
   an order on the template's channel: `s`, the slot index and generation, with the worker's end
   of the new channel attached (SCM_RIGHTS).
3. The template double-forks: the intermediate child forks the worker and exits at
   once, so the worker is orphaned and re-parented to the supervisor, which is a
   child subreaper (PR_SET_CHILD_SUBREAPER): workers stay the supervisor's children,
   watched and reaped by its one reaper like the ones it forks itself.
4. The new worker waits until its parent is the supervisor (only then asks for
   SIGTERM at the supervisor's death: PR_SET_PDEATHSIG fires on the intermediate's
   exit otherwise), writes its pid into its slot, tells `p` on its new channel (the
   supervisor adopts it: a pidfd, the reaper), and runs an ordinary worker loop.

The template serves nothing; it exits when told to stop (SIGTERM), when the
supervisor goes away, or when its channel closes.
"""

from __future__ import annotations

import gc
import os
import select
import socket
import struct
import sys
import time
from typing import Any

from .lifecycle import WorkerState

PROMOTE = 2  # the slot's stop flag: become the template
TEMPLATE_READY = b"t"
PID_WRITTEN = b"p"
ORDER = struct.Struct("=cii")  # b"s", slot index, generation
REPARENT_TIMEOUT = 10.0


def run_template(worker: Any) -> int:
    """In a promoted worker (`worker` is its `worker_loop.Worker`): fork workers on order."""
    scoreboard, index = worker.scoreboard, worker.index
    if scoreboard.state(index) != WorkerState.STOPPING:
        scoreboard.set_state(index, WorkerState.STOPPING)
    if getattr(worker.server, "freeze_heap", True):
        gc.collect()  # once, before the freeze: no garbage kept in the shared pages
        gc.freeze()
    worker.channel.setblocking(True)
    worker.tell(TEMPLATE_READY)
    while not worker.stopping:
        scoreboard.beat(index)
        if os.getppid() != worker.parent_pid:
            return 0
        readable, _, _ = select.select(
            [worker.channel, worker.wake_read], [], [], worker.heartbeat_interval
        )
        if worker.channel in readable:
            try:
                data, fds, _flags, _address = socket.recv_fds(worker.channel, ORDER.size, 1)
            except OSError:
                return 0
            if len(data) != ORDER.size or not fds:
                for fd in fds:
                    os.close(fd)
                return 0  # the supervisor closed the channel, or spoke nonsense
            _kind, slot, generation = ORDER.unpack(data)
            fork_worker(worker, slot, generation, fds[0])
    return 0


def fork_worker(template: Any, index: int, generation: int, channel_fd: int) -> None:
    """Double fork: the grandchild becomes the worker of slot `index`; the template goes on."""
    try:
        intermediate = os.fork()
    except OSError:
        os.close(channel_fd)
        return  # the supervisor gives up on the slot when no pid comes
    if intermediate == 0:
        try:
            if os.fork() == 0:
                _become_worker(template, index, generation, channel_fd)  # never returns
        finally:
            os._exit(0)
    os.close(channel_fd)
    os.waitpid(intermediate, 0)


def _become_worker(template: Any, index: int, generation: int, channel_fd: int) -> None:
    code = 1
    try:
        gc.enable()  # everything inherited from the template stays frozen
        os.setpgid(0, 0)
        supervisor = template.parent_pid
        deadline = time.monotonic() + REPARENT_TIMEOUT
        while os.getppid() != supervisor:
            if time.monotonic() > deadline:
                os._exit(1)
            time.sleep(0.001)
        _die_with_parent()
        if os.getppid() != supervisor:
            os._exit(1)
        template.channel.close()
        os.close(template.wake_read)
        os.close(template.wake_write)
        channel = socket.socket(fileno=channel_fd)
        slot = template.scoreboard.slots[index]
        if slot.pid or slot.generation != generation or slot.state != WorkerState.STARTING:
            os._exit(1)  # too late: the supervisor gave up on this order and reused the slot
        slot.pid = os.getpid()
        channel.send(PID_WRITTEN)
        worker = template.twin(index, channel)  # a worker_loop.Worker, like the template
        code = worker.run()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _die_with_parent() -> None:
    """Linux: SIGTERM when the supervisor (now our parent) dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
