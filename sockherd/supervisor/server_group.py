"""Several servers, one supervisor: the first server's loop serves them all.

`sockherd serve --bind A --bind B` builds one server per address, each with
its own class (TCP, UDP, Unix) and, in prefork mode, its own worker pool.  They
share one process and one loop, so there is one set of signal handlers, one
control socket, one metrics endpoint and one reaper:

* the other servers ("siblings") point at the first as their loop host: the
  fds they would watch (their listening socket, forked children, workers) are
  watched by its selector, and a ready connection is handled by the sibling's
  own `_handle_request_noblock()`;
* the loop runs every sibling's `service_actions()` after its own; as it ends,
  every prefork pool of the group starts draining at once, under one deadline;
* `shutdown()` on any member stops the one loop;
* a prefork host starts, signals, reloads, scales and reports every pool of
  the group, and its metrics endpoint exposes every member's series, each
  under its own `server` label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def serve_together(servers: Sequence[Any], poll_interval: float = 0.5) -> None:
    """Serve every server from the first one's `serve_forever()` until it is shut down.

    The servers must be sockherd servers, bound and activated, all of the same
    concurrency mode.  Returns when the loop stops.  The group stays formed: close
    the first server first, then the others (their children are reaped through it).
    """
    host, *siblings = servers
    for sibling in siblings:
        if sibling._sockherd_loop_host not in (None, host) or sibling._sockherd_siblings:
            raise ValueError(f"{sibling!r} is already part of another group")
        sibling._sockherd_loop_host = host  # for good: its fds stay in the host's care
    host._sockherd_siblings = tuple(siblings)
    host.serve_forever(poll_interval)
