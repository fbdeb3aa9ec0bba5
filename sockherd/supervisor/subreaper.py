"""Orphan duty: the supervisor adopts what handlers fork and abandon, as PID 1 or subreaper.

In a container the supervisor is often PID 1, and every orphan in the container
becomes its child; elsewhere Linux lets a process ask for the same role
(PR_SET_CHILD_SUBREAPER).  Either way it must reap those children, or they stay
zombies; the Arbiter's reaper does (`reaper.ChildReaper.reap_any`).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def take_orphan_duty(setting: bool | None, in_main_thread: bool) -> bool:
    """Whether this supervisor reaps orphans; becomes a subreaper if it needs to.

    `setting` (PreforkMixIn.reap_orphans): None means "when the loop runs in the main
    thread", i.e. in a process of its own; True/False: always/never.
    """
    wanted = in_main_thread if setting is None else setting
    if not wanted:
        return False
    if os.getpid() == 1:
        return True
    if become_subreaper():
        return True
    log.info(
        "this platform has no child subreaper (Linux prctl PR_SET_CHILD_SUBREAPER): "
        "processes that handlers fork and abandon are left to init"
    )
    return False


def become_subreaper() -> bool:
    """Linux: adopt orphaned descendants (PR_SET_CHILD_SUBREAPER); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        return bool(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
