"""Handlers that use prometheus_client themselves, in its multiprocess mode.

prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR) writes one set
of mmap'd `.db` files per process.  With a fork per request that is one file
set per request, kept forever: scrapes get slower and slower (about 30 µs per
dead child).  When the supervisor serves metrics and that variable is set, it:

* wipes the directory's `.db` files when serving starts (stale pids' files
  would otherwise be counted again);
* adds prometheus_client's MultiProcessCollector to its scrape;
* for every reaped child: `mark_process_dead(pid)` (live gauges), and folds the
  dead pid's counter, histogram and summary files into one `<type>_archive.db`
  per type, then deletes them, so the file count, and the scrape time, stay
  flat however many children have come and gone.  Empty files left by children
  killed while creating them are deleted too.

Everything runs in the supervisor's single-threaded loop, between waitpid()
and the next scrape, so no scrape can see a half-folded file.  Gauges in the
default `all` mode keep one series per pid; use a `live*` mode for them.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

FOLDED_TYPES = ("counter", "histogram", "summary")


def multiprocess_directory() -> str | None:
    """The directory prometheus_client's multiprocess mode uses, if it is switched on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


class UserMetrics:
    """The supervisor's side of prometheus_client's multiprocess mode for one directory."""

    def __init__(self, path: str, keep_files: bool = False) -> None:
        """`keep_files`: the live workers' files stay (after an in-place upgrade)."""
        from prometheus_client.mmap_dict import MmapedDict

        self.path = path
        os.makedirs(path, exist_ok=True)
        for stale in [] if keep_files else glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
        self._archives = {
            kind: MmapedDict(os.path.join(path, f"{kind}_archive.db")) for kind in FOLDED_TYPES
        }
        self.folded_files = 0

    def collect(self) -> Any:
        """The families of every process's metrics (prometheus_client Metric objects)."""
        from prometheus_client.multiprocess import MultiProcessCollector

        return MultiProcessCollector(None, self.path).collect()

    def child_exited(self, pid: int) -> None:
        """Bookkeeping for a reaped child: live gauges dropped, its counters folded."""
        from prometheus_client.mmap_dict import MmapedDict
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, self.path)
        for kind in FOLDED_TYPES:
            dead = os.path.join(self.path, f"{kind}_{pid}.db")
            try:
                empty = os.path.getsize(dead) == 0
            except FileNotFoundError:
                continue
            if not empty:
                archive = self._archives[kind]
                for key, value, timestamp, _pos in MmapedDict.read_all_values_from_file(dead):
                    folded, _ = archive.read_value(key)
                    archive.write_value(key, folded + value, timestamp)
            os.remove(dead)
            self.folded_files += 1

    def close(self) -> None:
        """Close the archive files (they stay on disk for the next scrape's reader)."""
        for archive in self._archives.values():
            archive.close()
