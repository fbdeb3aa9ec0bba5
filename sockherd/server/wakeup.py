"""A self-pipe that wakes a sleeping serve loop from another thread or a signal handler.

`serve_forever()` sleeps in `select()`; CPython's only way to stop it is to wait
for the `poll_interval` to expire.  `shutdown()` writes one byte here instead, so
the loop wakes at once.  The pipe is non-blocking at both ends: a full pipe
already means a wake-up is pending, so a failed write loses nothing.
"""

from __future__ import annotations

import os
import weakref


def _make_nonblocking_pipe() -> tuple[int, int]:
    if hasattr(os, "pipe2"):
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    read_fd, write_fd = os.pipe()  # POSIX without pipe2 (macOS)
    for fd in (read_fd, write_fd):
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
    return read_fd, write_fd


def _close_fds(fds: tuple[int, int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class WakeupPipe:
    """Two file descriptors: put `read_fd` in a selector, call `wake()` to make it readable.

    The fds are closed by `close()` or, failing that, when the object is
    garbage-collected, so a server that is never closed does not leak them.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = _make_nonblocking_pipe()
        self._closed = False
        self._finalizer = weakref.finalize(self, _close_fds, (self.read_fd, self.write_fd))

    @property
    def closed(self) -> bool:
        """True once `close()` has run; a closed pipe ignores `wake()`."""
        return self._closed

    def wake(self) -> None:
        """Make `read_fd` readable.  Safe from any thread and from a signal handler."""
        if self._closed:
            return
        try:
            os.write(self.write_fd, b"\0")
        except (BlockingIOError, BrokenPipeError, OSError):
            # Full: a wake-up is already pending.  Closed under us: nobody to wake.
            pass

    def drain(self) -> None:
        """Consume every pending wake-up byte so the next `select()` sleeps again."""
        if self._closed:
            return
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Close both fds.  Idempotent."""
        self._closed = True
        self._finalizer()
