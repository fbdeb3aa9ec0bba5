"""`sockherd ctl upgrade`: start an in-place upgrade and wait for its outcome.

The supervisor answers `upgrade` at once with the upgrade's id (or why it refuses);
the outcome comes later, after the pre-flight, the exec and the new generation's
readiness, so the client asks `status` every 0.1 s until the snapshot's last
upgrade is that id with an outcome.  Between the two images the control socket
keeps its listener (connections wait in its backlog), but a connection the old
image had accepted is closed by the exec: such a poll is simply repeated.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from .supervisor.control import send_command, unreachable

POLL_INTERVAL = 0.1
MARGIN = 30.0  # beyond the upgrade timeout: the pre-flight and the exec


def upgrade_client(path: str, as_json: bool) -> int:
    """Run `ctl upgrade` against the control socket at `path`; 0 if the upgrade took."""
    try:
        reply = send_command(path, "upgrade")
    except OSError as error:
        print(unreachable(path, error), file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"sockherd: upgrade refused: {reply.get('error')}", file=sys.stderr)
        return 1
    upgrade_id = reply["upgrade"]
    limit = float(reply.get("timeout", 60.0)) + MARGIN
    outcome = _wait_for_outcome(path, upgrade_id, time.monotonic() + limit)
    if outcome is None:
        print(
            f"sockherd: upgrade {upgrade_id} has no outcome after {limit:.0f} s; see the log",
            file=sys.stderr,
        )
        return 1
    last, status = outcome
    if as_json:
        print(json.dumps(last, indent=2))
    elif last["outcome"] == "ok":
        print(
            f"upgraded in {last.get('seconds', 0.0):.1f} s: pid {status.get('pid')} runs "
            f"the new code, generation {status.get('generation')} serves"
        )
    if last["outcome"] != "ok":
        print(f"sockherd: upgrade failed ({last['outcome']}): {last['reason']}", file=sys.stderr)
        return 1
    return 0


def _wait_for_outcome(
    path: str, upgrade_id: int, deadline: float
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    while time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        try:
            status = send_command(path, "status", timeout=5.0)
        except (OSError, ValueError):
            continue  # between two images, or a reply cut short by the exec
        last = status.get("upgrade") or {}
        if last.get("id") == upgrade_id and last.get("outcome"):
            return last, status
    return None
