"""The predefined server classes: a concurrency mix-in first, then a socket server.

The names and their conditions match CPython: Forking* only where `os.fork`
exists, Unix* only where `socket.AF_UNIX` does.  `ForkingUnixStreamServer`
and `ForkingUnixDatagramServer` are CPython 3.12 names, offered on 3.11 too.
"""

from __future__ import annotations

import os
import socket

from .socket_servers import TCPServer, UDPServer
from .threading_mixin import ThreadingMixIn

if hasattr(os, "fork"):
    from .forking import ForkingMixIn

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        pass

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        pass


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    pass


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    pass


if hasattr(socket, "AF_UNIX"):
    from .socket_servers import UnixDatagramServer, UnixStreamServer

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        pass

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        pass

    if hasattr(os, "fork"):

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            pass

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            pass
