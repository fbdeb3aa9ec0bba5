"""The adapter to multiprocess: the one module that touches its internals.

Two contacts, both here: the Process class the pool forks workers with (one that
leaks nothing when fork() fails), and `record_exit()`, which hands multiprocess an
exit status that the supervisor's reaper took with waitpid().

multiprocess's fork `Popen._launch()` makes two pipes and then calls
`os.fork()`; when the fork fails (EAGAIN at the process limit, ENOMEM) the
exception leaves the four pipe fds open, so a supervisor retrying through a
long fork-failure episode would leak four fds per attempt and end in EMFILE.
`_ClosingPopen` closes them.  It finds them in the failed frame rather than
copying `_launch()`, whose body differs between multiprocess builds for
different Pythons; the pipe variables have the same names in all of them.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

_PIPE_NAMES = ("parent_r", "child_w", "child_r", "parent_w")


def _close_pipes_of_failed_launch(traceback: TracebackType | None, code: Any) -> None:
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code is code:
            for name in _PIPE_NAMES:
                fd = frame.f_locals.get(name)
                if isinstance(fd, int):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            return
        traceback = traceback.tb_next


def worker_process_class(context: Any) -> type:
    """`context.Process` (a fork context's), made to close its pipes when fork() fails."""
    from multiprocess.popen_fork import Popen

    class _ClosingPopen(Popen):  # type: ignore[misc]
        def _launch(self, process_obj: Any) -> None:
            try:
                super()._launch(process_obj)
            except OSError as error:
                _close_pipes_of_failed_launch(error.__traceback__, Popen._launch.__code__)
                raise

    class WorkerProcess(context.Process):  # type: ignore[misc]
        @staticmethod
        def _Popen(process_obj: Any) -> Any:
            return _ClosingPopen(process_obj)

    return WorkerProcess


def record_exit(process: Any, exitcode: int) -> None:
    """Tell multiprocess that the supervisor's reaper has waited for `process`.

    multiprocess 0.70 waits on its own pid in `Process.exitcode`; once our waitpid()
    has taken the status, its own wait would fail and `is_alive()` would stay True
    forever.  This is the one place that touches its internals (`Popen.returncode`).
    """
    popen = getattr(process, "_popen", None)
    if popen is not None and popen.returncode is None:
        popen.returncode = exitcode


def exit_code_taken(process: Any) -> int:
    """The exit code multiprocess recorded when it reaped `process` itself (its
    `Process.start()` waits for exited children first); 0 if it has none."""
    popen = getattr(process, "_popen", None)
    code = getattr(popen, "returncode", None)
    return int(code) if code is not None else 0


class AdoptedProcess:
    """Stands in for the multiprocess Process of a worker the supervisor did not fork with
    multiprocess -- an earlier image's (in-place upgrade) or the template's (refork): it
    has a pid (0 until known) and nothing for multiprocess to wait on."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sentinel = None

    def close(self) -> None:
        """Nothing to release."""
