"""Loading the new code in a child before an in-place upgrade execs it (the pre-flight).

The child is the same command line the supervisor was started with, with
`SOCKHERD_PREFLIGHT=1` in its environment: it reads the configuration again (the
TOML file, the `SOCKHERD_*` variables, the arguments), imports the handler or
factory and builds the server class, then exits -- 0 if all of that worked.  It
binds nothing and serves nothing (see `sockherd.preflight`).  Its stderr comes back
over a pipe watched by the serve loop (the last 64 KiB are kept: the traceback),
and its exit status through the one reaper, so the supervisor never blocks on it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from ..server.nonblocking_listener import AddSource, RemoveSource
from .reaper import ChildReaper

PREFLIGHT_ENVIRONMENT = "SOCKHERD_PREFLIGHT"
OUTPUT_KEPT = 64 * 1024


class PreflightRun:
    """One pre-flight child; `on_done(ok, output)` is called once, from the loop."""

    def __init__(
        self,
        add_source: AddSource,
        remove_source: RemoveSource,
        reaper: ChildReaper,
        on_done: Callable[[bool, str], None],
    ) -> None:
        self._remove_source = remove_source
        self._on_done = on_done
        self._output = b""
        self._status: int | None = None
        self._eof = False
        self.done = False
        read_end, write_end = os.pipe()
        environment = dict(os.environ, **{PREFLIGHT_ENVIRONMENT: "1"})
        try:
            self.pid = os.posix_spawn(
                sys.executable,
                list(sys.orig_argv),
                environment,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, write_end, 1),
                    (os.POSIX_SPAWN_DUP2, write_end, 2),
                ],
                setsigdef=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2),
            )
        except OSError:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self._read_end = read_end
        os.set_blocking(read_end, False)
        add_source(read_end, self._readable)
        reaper.watch(self.pid, os.pidfd_open(self.pid), True, self._exited)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._read_end, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._output = (self._output + chunk)[-OUTPUT_KEPT:]
            return
        self._eof = True
        self._remove_source(self._read_end)
        os.close(self._read_end)
        self._finish()

    def _exited(self, status: int | None) -> None:
        self._status = 0 if status is None else status  # None: reaped elsewhere
        self._finish()

    def _finish(self) -> None:
        if self.done or not self._eof or self._status is None:
            return
        self.done = True
        ok = os.waitstatus_to_exitcode(self._status) == 0 and b"preflight ok" in self._output
        self._on_done(ok, self._output.decode("utf-8", "replace"))

    def kill(self) -> None:
        """Stop a pre-flight that takes too long (its exit still comes through the reaper)."""
        if not self.done:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def reason_of(output: str) -> str:
    """The last line of the pre-flight's output that says something: the error."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "the new code could not be loaded (no output)"
