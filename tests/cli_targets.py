"""Targets for `sockherd serve` in tests/test_cli.py: server factories, good and bad."""

from __future__ import annotations

import os

import sockherd
from sockherd.examples.echo import EchoHandler


class ShoutingHandler(sockherd.StreamRequestHandler):
    """Echo each line upper-cased: shows the factory's own handler is in use."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


def threaded_server() -> sockherd.ThreadingTCPServer:
    """A factory: builds and binds its own server, on the port in SHOUT_PORT (0: any)."""
    server = sockherd.ThreadingTCPServer(
        ("127.0.0.1", int(os.environ.get("SHOUT_PORT", "0"))), ShoutingHandler
    )
    server.daemon_threads = True
    return server


def prefork_server() -> sockherd.PreforkTCPServer:
    """A factory for a prefork pool of two echo workers."""
    return sockherd.PreforkTCPServer(("127.0.0.1", 0), EchoHandler, workers=2)


def failing_factory() -> sockherd.TCPServer:
    """A factory that cannot build its server."""
    raise RuntimeError("no database configured")


def stdlib_server():
    """A factory that builds its server from the standard library's socketserver."""
    import socketserver

    return socketserver.TCPServer(("127.0.0.1", 0), EchoHandler)


class CarelessPreforkServer(sockherd.PreforkTCPServer):
    """A prefork server whose service_actions() override forgets to call super()."""

    def service_actions(self) -> None:
        pass


def careless_prefork_server() -> CarelessPreforkServer:
    """A factory for two echo workers under a service_actions() that does nothing."""
    return CarelessPreforkServer(("127.0.0.1", 0), EchoHandler, workers=2, graceful_timeout=5)
