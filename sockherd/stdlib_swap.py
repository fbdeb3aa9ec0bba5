"""Make `import socketserver` return sockherd, for stdlib modules that import it themselves."""

from __future__ import annotations

import sys

# Modules that bind socketserver's classes when they are first imported.
_DEPENDENTS = ("http.server", "xmlrpc.server", "wsgiref.simple_server", "logging.config")


def install() -> None:
    """Put sockherd in `sys.modules["socketserver"]`.

    Call it before `http.server`, `xmlrpc.server`, `wsgiref.simple_server` or
    `logging.config` is imported: they subclass the socketserver they find at
    import time.  Raises RuntimeError naming the modules that were imported too
    early, since they would keep using CPython's classes.  Idempotent.
    """
    import sockherd

    current = sys.modules.get("socketserver")
    if current is sockherd:
        return
    too_early = [
        name
        for name in _DEPENDENTS
        if name in sys.modules and getattr(sys.modules[name], "socketserver", None) is current
    ]
    if current is not None and too_early:
        raise RuntimeError(
            "sockherd.install() came too late: "
            + ", ".join(too_early)
            + " already imported CPython's socketserver. Call sockherd.install() before "
            "importing them (for example at the top of your main module)."
        )
    sys.modules["socketserver"] = sockherd
