"""What the serve loop does when `accept()` (or `recvfrom()`) fails.

CPython drops every OSError from `get_request()` silently.  For the harmless
races (ECONNABORTED, EAGAIN after another process won the accept) that is
right.  For resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) it is not:
the pending connection stays in the backlog, the listening socket stays
readable, and the loop spins at 100% CPU without a word.

Here a resource error starts an *episode*: one warning is logged, and the loop
stops watching the listening socket for a delay that doubles up to
`MAX_DELAY`.  The pending connections wait in the kernel's backlog, so none is
lost; the first successful accept ends the episode with one more log line.
Every failure, harmless or not, is counted by errno name for the metrics.
"""

from __future__ import annotations

import collections
import errno
import logging
import time

log = logging.getLogger(__name__)

RESOURCE_ERRNOS = frozenset(
    code for code in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) if code
)
FIRST_DELAY = 0.05
MAX_DELAY = 1.0


class AcceptBackoff:
    """Failure counts and the current back-off episode of one server's accept path."""

    def __init__(self) -> None:
        self.failures: collections.Counter[str] = collections.Counter()
        self._paused_until = 0.0
        self._delay = 0.0
        self._episode_failures = 0

    def paused_for(self) -> float:
        """Seconds the loop should still leave the listening socket alone (0 when not paused)."""
        if not self._paused_until:
            return 0.0
        remaining = self._paused_until - time.monotonic()
        if remaining <= 0:
            self._paused_until = 0.0
            return 0.0
        return remaining

    def failed(self, error: OSError, where: object) -> None:
        """Record one failed accept; start or extend a pause if it was resource exhaustion."""
        name = errno.errorcode.get(error.errno or 0, "OTHER")
        self.failures[name] += 1
        if error.errno not in RESOURCE_ERRNOS:
            return
        self._episode_failures += 1
        if self._episode_failures == 1:
            self._delay = FIRST_DELAY
            log.warning(
                "accept() on %s failed: %s. Pausing accepts for %.2f s and backing off up to "
                "%.1f s; waiting connections stay queued. Raise the fd limit (ulimit -n) or "
                "lower the load. Not logged again until accepts succeed.",
                where,
                error,
                self._delay,
                MAX_DELAY,
            )
        else:
            self._delay = min(self._delay * 2, MAX_DELAY)
        self._paused_until = time.monotonic() + self._delay

    def succeeded(self, where: object) -> None:
        """Record a successful accept; ends an episode (with one log line) if one was open."""
        if self._episode_failures:
            log.warning(
                "accept() on %s works again after %d failed attempts",
                where,
                self._episode_failures,
            )
            self._episode_failures = 0
            self._paused_until = 0.0
