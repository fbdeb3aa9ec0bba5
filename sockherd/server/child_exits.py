"""What a reaped child's wait status means, as a short label for logs and metrics."""

from __future__ import annotations

import os
import signal


def describe_wait_status(status: int) -> str:
    """Turn a `waitpid()` status into "exit N" or "signal NAME" (e.g. "signal SIGKILL")."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"signal {signal.Signals(number).name}"
        except ValueError:
            return f"signal {number}"
    if os.WIFEXITED(status):
        return f"exit {os.WEXITSTATUS(status)}"
    return f"status {status}"
