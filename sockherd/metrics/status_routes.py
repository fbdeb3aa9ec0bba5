"""The operator's pages beside /metrics: `/status.json`, `/status`, `/livez`, `/readyz`.

The metrics endpoint (`endpoint`) answers them on the same port, behind the same
basic auth and TLS, from the same snapshot source.  What each one answers is
documented in `status_json` (the JSON document and health) and `status_page`
(the HTML page, which reads /status.json every 2 s).
"""

from __future__ import annotations

from collections.abc import Callable

from .snapshot import SupervisorSnapshot
from .status_json import readiness, render_status_json
from .status_page import PAGE

STATUS_PATHS = ("/status.json", "/status", "/livez", "/readyz")
INDEX = "sockherd: /metrics (Prometheus), /status (status page), /status.json, /livez, /readyz\n"
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"


def status_response(
    target: str, source: Callable[[], SupervisorSnapshot]
) -> tuple[int, bytes, str]:
    """(HTTP status, body, content type) for one of `STATUS_PATHS` (query ignored)."""
    path = target.split("?")[0]
    if path == "/livez":
        return 200, b"ok: the serve loop runs\n", TEXT_TYPE
    if path == "/status":
        return 200, PAGE, HTML_TYPE
    snapshot = source()
    if path == "/readyz":
        ready, why = readiness(snapshot)
        return (200 if ready else 503), f"{why}\n".encode(), TEXT_TYPE
    return 200, render_status_json(snapshot), JSON_TYPE
