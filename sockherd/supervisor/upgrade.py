"""In-place upgrade: the supervisor execs its new code and keeps its pid, sockets and workers.

Theory of operation
-------------------
`sockherd ctl upgrade` or SIGUSR2 starts an upgrade; the Arbiter, RUNNING, becomes
UPGRADING (a second upgrade, or a HUP, is refused meanwhile):

1. Pre-flight (`preflight_run`): the new code is loaded in a child.  If that
   fails, nothing else happens: the old workers never stopped serving, the
   outcome is `preflight_failed` and its reason is the traceback's last line
   (the whole output goes to the log).
2. Hand-over: every listener (`server.carried_listeners`), each pool's
   scoreboard memfd and worker channels (`pool_handover`) become inheritable,
   and what the supervisor holds in memory -- the pools, the counters, this
   upgrade -- is written as JSON into `SOCKHERD_UPGRADE`.  The operator signals
   are blocked, so that none kills the process between two images (the mask
   survives exec; the new image unblocks them once it handles them), and the
   process execs itself: `sys.executable` with `sys.orig_argv`.  The workers
   are left alone: they are still this pid's children and go on serving.
3. The new image reads the configuration again, takes the listeners over
   instead of binding, adopts the old workers, and starts a new generation as
   a reload does.  When every pool's new generation is ready and the old one
   is gone, the outcome is `ok`.  If it is not ready within `upgrade_timeout`,
   the pools go back to the old generation (which never stopped serving) and
   stop the new workers: `not_ready`.

The outcome of the last upgrade, and counts by outcome, are in the snapshot;
`ctl upgrade` polls `status` until its upgrade has an outcome.  An upgrade needs
Linux (memfd for the scoreboard, pidfd to watch adopted workers) and a prefork
pool: in the other modes the requests in progress live in this very process.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from ..server import carried_listeners
from .pool_handover import abandon_generation, carry_pool, keep_pool_private
from .preflight_run import PreflightRun, reason_of
from .signals import SUPERVISOR_SIGNALS
from .supervisor_state import State
from .worker_timeouts import send_signal

if TYPE_CHECKING:
    from .arbiter import Arbiter

log = logging.getLogger(__name__)

HANDOVER_ENVIRONMENT = "SOCKHERD_UPGRADE"
OUTCOMES = ("ok", "preflight_failed", "not_ready")
DEFAULT_UPGRADE_TIMEOUT = 60.0


def take_handover() -> dict[str, Any] | None:
    """In a new image: what the previous image handed over (removed from the environment)."""
    text = os.environ.pop(HANDOVER_ENVIRONMENT, "")
    if not text:
        return None
    try:
        handover: dict[str, Any] = json.loads(text)
    except ValueError:
        log.error("%s is not valid JSON: starting afresh", HANDOVER_ENVIRONMENT)
        return None
    return handover


def upgrade_supported() -> str | None:
    """None if this system can upgrade in place, else why not."""
    if not (hasattr(os, "memfd_create") and hasattr(os, "pidfd_open")):
        return "an in-place upgrade needs Linux (memfd and pidfd)"
    return None


class Upgrader:
    """The Arbiter's upgrades: the one in progress, the last outcome, counts by outcome."""

    def __init__(self, arbiter: Arbiter, timeout: float, upgradable: bool) -> None:
        self.arbiter = arbiter
        self.timeout = timeout
        self.upgradable = upgradable  # the process is `sockherd serve`
        self.counts: collections.Counter[str] = collections.Counter(dict.fromkeys(OUTCOMES, 0))
        self.images = 1  # programs this process has run: 1 + upgrades that exec'd
        self.last: dict[str, Any] | None = None
        self.next_id = 1
        self.preflight: PreflightRun | None = None
        self.deadline: float | None = None  # pre-flight, then the new generation's readiness

    # --- the old image --------------------------------------------------------------------

    def request(self, why: str) -> dict[str, Any]:
        """Start an upgrade; the control reply: {"ok": True, "upgrade": id} or an error."""
        refusal = self._refusal()
        if refusal:
            log.warning("%s: upgrade refused: %s", why, refusal)
            return {"ok": False, "error": refusal}
        arbiter = self.arbiter
        assert arbiter.reaper is not None
        now = time.monotonic()
        self.last = {"id": self.next_id, "outcome": None, "reason": "", "started": now}
        self.next_id += 1
        log.info("%s: upgrading in place; loading the new code first", why)
        try:
            self.preflight = PreflightRun(
                arbiter.host.add_wake_source,
                arbiter.host.remove_wake_source,
                arbiter.reaper,
                self._preflight_done,
            )
        except OSError as error:
            self._finish("preflight_failed", f"cannot start the pre-flight: {error}")
            return {"ok": False, "error": self.last["reason"]}
        arbiter.state.move(State.UPGRADING)
        self.deadline = now + self.timeout
        return {"ok": True, "upgrade": self.last["id"], "timeout": self.timeout}

    def _refusal(self) -> str | None:
        state = self.arbiter.state
        if state.is_(State.UPGRADING):
            return "an upgrade is already in progress"
        if state.is_(State.RELOADING):
            return "a reload is in progress; upgrade once it is done"
        if not state.is_(State.RUNNING):
            return f"the supervisor is {state.current.value}"
        if not self.upgradable:
            return (
                "an in-place upgrade needs the sockherd serve command (a program's own "
                "server cannot be loaded without running it)"
            )
        if not self.arbiter.pools:
            return "an in-place upgrade needs a prefork pool (--mode prefork)"
        if len(self.arbiter.pools) != len(self.arbiter.servers):
            return "an in-place upgrade needs every server to be a prefork server"
        return upgrade_supported()

    def _preflight_done(self, ok: bool, output: str) -> None:
        self.preflight = None
        if not self.arbiter.state.is_(State.UPGRADING):  # a stop came first: no exec now
            log.info("upgrade abandoned: the supervisor is %s", self.arbiter.state.current.value)
            self._finish("preflight_failed", "abandoned: the supervisor is stopping")
            return
        if not ok:
            log.error("upgrade: the new code failed to load; still serving the old one:\n%s",
                      output.rstrip())  # fmt: skip
            self._finish("preflight_failed", reason_of(output))
            self.arbiter.state.move(State.RUNNING)
            return
        self._exec()

    def _exec(self) -> None:
        """Hand everything over and exec the new image; back to RUNNING if exec fails."""
        arbiter = self.arbiter
        assert self.last is not None
        try:
            pools = {label: carry_pool(pool) for label, pool in arbiter.pools_by_label()}
        except ValueError as error:  # a scoreboard without a memfd (memfd_create failed)
            for pool in arbiter.pools.values():
                keep_pool_private(pool)
            log.error("upgrade: %s; still serving the old code", error)
            self._finish("preflight_failed", str(error))
            arbiter.state.move(State.RUNNING)
            return
        handover = {
            "upgrade": self.last,
            "counts": dict(self.counts),
            "images": self.images,
            "started": arbiter.started,
            "orphans_reaped": arbiter.reaper.orphans_reaped if arbiter.reaper else 0,
            "pools": pools,
        }
        carried_listeners.pass_on()
        os.environ[HANDOVER_ENVIRONMENT] = json.dumps(handover)
        # SIGCHLD is not blocked: its default action is to be ignored, and the new image
        # reaps what exited meanwhile; a blocked SIGCHLD would outlive the exec in workers.
        blocked = {getattr(signal, n) for n in SUPERVISOR_SIGNALS}
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        log.info("upgrade: exec %s (pid %d stays)", " ".join(sys.orig_argv), arbiter.pid)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(sys.executable, sys.orig_argv)
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
            os.environ.pop(HANDOVER_ENVIRONMENT, None)
            carried_listeners.keep_private()
            for pool in arbiter.pools.values():
                keep_pool_private(pool)
            log.error("upgrade: exec failed (%s); still serving the old code", error)
            self._finish("preflight_failed", f"exec failed: {error}")
            arbiter.state.move(State.RUNNING)

    # --- the new image --------------------------------------------------------------------

    def resume(self, handover: dict[str, Any], leftover: dict[str, Any]) -> None:
        """In the new image, its pools built: retire the pools the configuration dropped
        (`leftover`), reap what exited between the images, take the counts and the
        upgrade in progress over."""
        reaper = self.arbiter.reaper
        assert reaper is not None
        for label, pool in leftover.items():
            log.warning("upgrade: %s is no longer served; its old workers stop", label)
            for worker in pool["workers"]:
                send_signal(int(worker["pid"]), signal.SIGTERM)
        carried_listeners.close_unclaimed()
        reaper.orphans_reaped = int(handover["orphans_reaped"])
        if self.arbiter.orphan_duty:
            reaper.reap_any()
        self.counts.update({k: int(v) for k, v in handover["counts"].items()})
        self.images = int(handover["images"]) + 1
        self.last = dict(handover["upgrade"])
        self.next_id = int(self.last["id"]) + 1
        self.deadline = time.monotonic() + self.timeout
        log.info("upgrade: new image running; waiting for the new workers to be ready")

    def after_iteration(self, now: float) -> None:
        """Decide the upgrade in progress: ready, or past its deadline."""
        if self.deadline is None or not self.arbiter.state.is_(State.UPGRADING):
            return
        if self.preflight is not None:
            if now >= self.deadline:
                self.preflight.kill()
                log.error("upgrade: the new code took more than %s s to load", self.timeout)
            return
        pools = self.arbiter.pools.values()
        if not any(pool.reloading for pool in pools):
            self._finish("ok", "")
            self.arbiter.state.move(State.RUNNING)
            log.info("upgrade done: generation %d serves the new code", self.arbiter.generation)
        elif now >= self.deadline:
            failures = sum(pool.boot_failures for pool in pools)
            reason = f"the new workers were not ready within upgrade_timeout={self.timeout} s" + (
                f" ({failures} failed to boot)" if failures else ""
            )
            for pool in pools:
                abandon_generation(pool)
            log.error("upgrade: %s; the old workers go on serving", reason)
            self._finish("not_ready", reason)
            self.arbiter.state.move(State.RUNNING)

    def _finish(self, outcome: str, reason: str) -> None:
        self.deadline = None
        self.counts[outcome] += 1
        if self.last is not None:
            self.last.update(
                outcome=outcome,
                reason=reason,
                seconds=round(time.monotonic() - float(self.last["started"]), 3),
            )

    def status(self) -> dict[str, Any] | None:
        """The last upgrade: id, outcome (None while in progress), reason, seconds."""
        if self.last is None:
            return None
        return {k: v for k, v in self.last.items() if k != "started"}
