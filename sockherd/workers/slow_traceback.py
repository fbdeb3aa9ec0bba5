"""The worker's side of the slow-request log: dump every thread's traceback on a signal.

With `slow_request_timeout` set, each worker registers `faulthandler` for
`SLOW_SIGNAL` (SIGURG, which does nothing by default: a stray one is harmless).
When a request has run that long the supervisor writes a header line naming the
worker and the request, then sends the signal; faulthandler writes the Python
traceback of every thread from the signal handler itself -- at once, even while
the request is inside C code or a sleep -- to `slow_log` (opened in append mode)
or to stderr, and the request goes on.  A handler that takes SIGURG for itself
(out-of-band socket data) replaces this.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from typing import IO, Any

SLOW_SIGNAL = signal.SIGURG

_log_file: IO[bytes] | None = None  # kept open: faulthandler writes to its fd


def arm(server: Any) -> bool:
    """In a worker: register the traceback dump if the server has slow_request_timeout;
    return whether it did."""
    global _log_file
    if not getattr(server, "slow_request_timeout", None):
        return False
    path = getattr(server, "slow_log", None)
    target: Any = sys.stderr
    if path:
        try:
            _log_file = open(path, "ab", buffering=0)  # noqa: SIM115 - lives with the worker
            target = _log_file
        except OSError:
            pass  # the supervisor has said so once: the tracebacks go to stderr
    faulthandler.register(SLOW_SIGNAL, file=target, all_threads=True, chain=False)
    return True
