"""SIGUSR1: reopen the files that logging writes to, after log rotation moved them."""

from __future__ import annotations

import logging


def reopen_log_files() -> None:
    """Close and reopen the stream of every logging.FileHandler of the process."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = {h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers}
    for handler in handlers:
        if isinstance(handler, logging.FileHandler) and handler.stream is not None:
            handler.acquire()
            try:
                handler.stream.close()
                handler.stream = handler._open()
            finally:
                handler.release()
