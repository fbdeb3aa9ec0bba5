"""What a server does when it cannot fork: one warning per episode, a count per errno.

`fork()` fails with EAGAIN when the user has reached its process limit
(RLIMIT_NPROC, `ulimit -u`, a cgroup's pids.max) and with ENOMEM when the
kernel cannot copy the process; starting a prefork worker can also fail with
EMFILE/ENFILE (its socket pair and pipes need fds).  Such a failure usually
lasts a while and hits every attempt, so logging each one (CPython prints a
traceback per connection) would flood the log exactly when it matters.

An *episode* starts with the first failure (one warning that names the
errno, what the server does meanwhile and what to do about it) and ends with
the first fork that works (one more line, with the number of failures).
Every failure is counted by errno name for the metrics
(`sockherd_fork_failures_total`).
"""

from __future__ import annotations

import collections
import errno
import logging
import os

log = logging.getLogger(__name__)


def describe_errno(error: OSError) -> str:
    """`EAGAIN: Resource temporarily unavailable` for an OSError (its errno name and text)."""
    code = error.errno or 0
    name = errno.errorcode.get(code, "OTHER")
    text = os.strerror(code) if code else str(error)
    return f"{name}: {text}"


class ForkFailures:
    """Failed forks of one kind (request children, or prefork workers) of one server.

    `what` names the thing forked in the log lines ("fork", "fork of a worker").
    """

    def __init__(self, what: str = "fork") -> None:
        self.what = what
        self.by_errno: collections.Counter[str] = collections.Counter()
        self.episode_failures = 0

    def failed(self, error: OSError, meanwhile: str) -> None:
        """Count one failure; the first of an episode logs a warning ending with `meanwhile`.

        `meanwhile` says what the server does until forks work again, e.g.
        "closing connections until it works again".
        """
        self.by_errno[errno.errorcode.get(error.errno or 0, "OTHER")] += 1
        self.episode_failures += 1
        if self.episode_failures == 1:
            log.warning(
                "%s failed (%s); %s. Raise the process limit (ulimit -u, pids.max), the fd "
                "limit (ulimit -n) or free memory. Not logged again until it works.",
                self.what,
                describe_errno(error),
                meanwhile,
            )

    def succeeded(self) -> None:
        """Record a fork that worked; ends an episode (with one log line) if one was open."""
        if self.episode_failures:
            log.warning(
                "%s works again after %d failure%s",
                self.what,
                self.episode_failures,
                "" if self.episode_failures == 1 else "s",
            )
            self.episode_failures = 0
