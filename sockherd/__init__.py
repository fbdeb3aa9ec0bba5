"""sockherd: a drop-in `socketserver` that reaps promptly, and a supervisor for socket servers.

`import sockherd as socketserver` gives every public name of CPython 3.13's
`socketserver`, with the same attributes, defaults, hooks and behaviour, plus:

* `shutdown()` returns at once instead of after up to `poll_interval`;
* ForkingMixIn reaps each child as soon as it exits (also in `handle_request()`
  loops) and tallies exit statuses in `child_exit_counts`;
* the listen backlog defaults to `socket.SOMAXCONN` instead of 5;
* EMFILE and other resource errors on accept are logged once and backed off
  instead of spinning the loop;
* `close_timeout` bounds how long `server_close()` waits for children/threads.

`sockherd.install()` makes `import socketserver` itself return sockherd, for
stdlib servers (`http.server`, `xmlrpc.server`, `logging.config`) that import it.
Importing sockherd never imports `http.server`, `wsgiref` or
`prometheus_client.exposition`.
"""

from __future__ import annotations

import os
import socket

from .server.base_server import BaseServer
from .server.combinations import ThreadingTCPServer, ThreadingUDPServer
from .server.loop_hooks import LoopHooks, register_loop_extension
from .server.request_handlers import (
    BaseRequestHandler,
    DatagramRequestHandler,
    StreamRequestHandler,
)
from .server.socket_servers import BindError, TCPServer, UDPServer
from .server.threading_mixin import ThreadingMixIn
from .stdlib_swap import install
from .workers.live_record import describe_request

# socketserver's own version string, which some programs read.
__version__ = "0.4"

__all__ = [
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "ThreadingUDPServer",
    "ThreadingTCPServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
    "ThreadingMixIn",
]
if hasattr(os, "fork"):
    from .server.combinations import ForkingTCPServer, ForkingUDPServer
    from .server.forking import ForkingMixIn

    __all__.extend(["ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn"])

if hasattr(socket, "AF_UNIX"):
    from .server.combinations import ThreadingUnixDatagramServer, ThreadingUnixStreamServer
    from .server.socket_servers import UnixDatagramServer, UnixStreamServer

    __all__.extend(
        [
            "UnixStreamServer",
            "UnixDatagramServer",
            "ThreadingUnixStreamServer",
            "ThreadingUnixDatagramServer",
        ]
    )
    if hasattr(os, "fork"):
        from .server.combinations import ForkingUnixDatagramServer, ForkingUnixStreamServer

        __all__.extend(["ForkingUnixStreamServer", "ForkingUnixDatagramServer"])

# The prefork pool is imported on first use (see __getattr__ below): its modules (the
# pool, the scoreboard, the control socket, the metrics collector) would add ~5 MB to
# every process that imports sockherd, and a ForkingMixIn server copies its memory
# map on every fork.
_PREFORK_NAMES: list[str] = []
if hasattr(os, "fork"):
    _PREFORK_NAMES += ["PreforkMixIn", "PreforkTCPServer", "PreforkUDPServer"]
    if hasattr(socket, "AF_UNIX"):
        _PREFORK_NAMES += ["PreforkUnixStreamServer", "PreforkUnixDatagramServer"]
    __all__.extend(_PREFORK_NAMES)

# sockherd's own public names.
__all__.extend(["BindError", "install", "describe_request"])


def _metrics_extension(server: BaseServer) -> LoopHooks | None:
    """`metrics_address` on any sockherd server: the metrics package is imported only
    by a server that asks for an endpoint (its modules would grow every process)."""
    if getattr(server, "metrics_address", None) is None:
        return None
    from .metrics.service import metrics_extension

    return metrics_extension(server)


register_loop_extension(_metrics_extension)


# The public classes present themselves as sockherd.X, as CPython's do as socketserver.X.
def _present_as_sockherd(names: list[str]) -> None:
    for name in names:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith(__name__ + "."):
            obj.__module__ = __name__


_present_as_sockherd([name for name in __all__ if name not in _PREFORK_NAMES])


def __getattr__(name: str) -> object:
    """Load the prefork classes the first time one of them is asked for."""
    if name in _PREFORK_NAMES:
        from .supervisor import prefork

        for lazy in _PREFORK_NAMES:
            globals()[lazy] = getattr(prefork, lazy)
        _present_as_sockherd(_PREFORK_NAMES)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PREFORK_NAMES))
