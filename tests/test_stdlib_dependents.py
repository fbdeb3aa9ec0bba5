"""Stdlib services run unchanged on sockherd (spec section M, items 73-76).

Two flavours:

* in this process, sockherd's server classes combined with stdlib handlers
  (`http.server`, `xmlrpc.server`), exactly as those modules combine them with
  CPython's socketserver;
* in a fresh interpreter, `sockherd.install()` first, then the stdlib modules
  imported as usual: they subclass sockherd and serve real requests.  A fresh
  interpreter is needed because `install()` changes `sys.modules` for good and
  must run before `http.server`, `xmlrpc.server` and `logging.config` are
  imported, which this process has long done.
"""

from __future__ import annotations

import functools
import http.client
import http.server
import json
import os
import subprocess
import sys
import textwrap
import xmlrpc.client
import xmlrpc.server
from pathlib import Path
from typing import Any

import pytest
from conftest import serving

import sockherd

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", 0)
POLL = 0.05
SUBPROCESS_TIMEOUT = 60


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class EchoPathHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the request path and the pid that served it."""

    def do_GET(self) -> None:
        body = f"{self.path} {os.getpid()}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def http_get(address: tuple[str, int], path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(address[0], address[1], timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


SERVER_CLASSES = [
    "ThreadingTCPServer",
    pytest.param(
        "ForkingTCPServer",
        marks=pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    ),
]


# --- in-process: sockherd servers with stdlib handlers ----------------------------------


@pytest.mark.parametrize("server_class", SERVER_CLASSES)
def test_simple_http_request_handler_serves_a_file(server_class: str, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hello from sockherd\n")
    handler = functools.partial(QuietFileHandler, directory=str(tmp_path))
    server = getattr(sockherd, server_class)(LOOPBACK, handler)
    with serving(server, POLL):
        status, body = http_get(server.server_address, "/hello.txt")
    assert status == 200
    assert body == b"hello from sockherd\n"


@pytest.mark.parametrize("server_class", SERVER_CLASSES)
def test_base_http_request_handler_answers_a_get(server_class: str) -> None:
    server = getattr(sockherd, server_class)(LOOPBACK, EchoPathHandler)
    with serving(server, POLL):
        status, body = http_get(server.server_address, "/some/path")
    assert status == 200
    path, pid = body.decode().split()
    assert path == "/some/path"
    if server_class == "ForkingTCPServer":
        assert int(pid) != os.getpid()  # served by a child process
    else:
        assert int(pid) == os.getpid()


class SockherdXMLRPCServer(sockherd.TCPServer, xmlrpc.server.SimpleXMLRPCDispatcher):
    """`xmlrpc.server.SimpleXMLRPCServer`, rebuilt on sockherd.TCPServer the same way."""

    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int]) -> None:
        self.logRequests = False
        xmlrpc.server.SimpleXMLRPCDispatcher.__init__(self, False, None, False)
        sockherd.TCPServer.__init__(self, addr, xmlrpc.server.SimpleXMLRPCRequestHandler)


def test_xmlrpc_dispatcher_on_sockherd_tcp_server_answers_a_call() -> None:
    server = SockherdXMLRPCServer(LOOPBACK)
    server.register_function(lambda a, b: a + b, "add")
    host, port = server.server_address
    with serving(server, POLL), xmlrpc.client.ServerProxy(f"http://{host}:{port}/") as proxy:
        assert proxy.add(2, 3) == 5


# --- in a fresh interpreter: sockherd.install() -----------------------------------------

PRELUDE = """\
import json, socket, sys, threading
import sockherd
sockherd.install()
import http.client, http.server, logging, logging.config, xmlrpc.client, xmlrpc.server

def report(**result):
    print(json.dumps(result))
"""


def run_script(body: str, *, prelude: str = PRELUDE) -> dict[str, Any]:
    """Run `prelude + body` in a fresh interpreter and return the JSON line it printed last."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(body)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_install_makes_stdlib_servers_build_on_sockherd() -> None:
    result = run_script(
        """
        report(
            socketserver_is_sockherd=sys.modules["socketserver"] is sockherd,
            http_server=sockherd.TCPServer in http.server.HTTPServer.__mro__,
            threading_mixin=sockherd.ThreadingMixIn in http.server.ThreadingHTTPServer.__mro__,
            xmlrpc_server=sockherd.TCPServer in xmlrpc.server.SimpleXMLRPCServer.__mro__,
            logging_config=logging.config.ThreadingTCPServer is sockherd.ThreadingTCPServer,
            handler=sockherd.StreamRequestHandler in http.server.BaseHTTPRequestHandler.__mro__,
        )
        """
    )
    assert result == {
        "socketserver_is_sockherd": True,
        "http_server": True,
        "threading_mixin": True,
        "xmlrpc_server": True,
        "logging_config": True,
        "handler": True,
    }


def test_installed_threading_http_server_serves_a_get() -> None:
    result = run_script(
        """
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = ("hello " + self.path).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,))
        thread.start()
        try:
            connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
            connection.request("GET", "/index")
            response = connection.getresponse()
            status, body = response.status, response.read().decode()
            connection.close()
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()
        report(
            status=status,
            body=body,
            threading_mixin=isinstance(server, sockherd.ThreadingMixIn),
            tcp_server=isinstance(server, sockherd.TCPServer),
        )
        """
    )
    assert result == {
        "status": 200,
        "body": "hello /index",
        "threading_mixin": True,
        "tcp_server": True,
    }


def test_installed_simple_xmlrpc_server_answers_a_call() -> None:
    result = run_script(
        """
        server = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
        server.register_function(lambda a, b: a * b, "multiply")
        thread = threading.Thread(target=server.serve_forever, args=(0.05,))
        thread.start()
        try:
            host, port = server.server_address[:2]
            with xmlrpc.client.ServerProxy(f"http://{host}:{port}/") as proxy:
                product = proxy.multiply(6, 7)
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()
        report(product=product, served_by_sockherd=isinstance(server, sockherd.TCPServer))
        """
    )
    assert result == {"product": 42, "served_by_sockherd": True}


def test_installed_logging_config_listen_applies_a_config() -> None:
    # logging.config.listen(0) returns an unstarted Thread; once its `ready` event is
    # set, `t.port` holds the real port.  The handler sets `ready` again after it has
    # applied a config, which is how CPython's test_logging waits for it.
    result = run_script(
        """
        import contextlib, struct

        target = logging.getLogger("sockherd.listen_demo")
        target.setLevel(logging.WARNING)
        listener = logging.config.listen(0)
        listener.start()
        started = listener.ready.wait(10)
        port = listener.port
        listener.ready.clear()
        config = {
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"sockherd.listen_demo": {"level": "DEBUG"}},
        }
        payload = json.dumps(config).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(struct.pack(">L", len(payload)) + payload)
        applied = listener.ready.wait(10)
        receiver = logging.config._listener
        logging.config.stopListening()
        # Wake the receiver's select() so it sees the abort now, not after its 1 s timeout.
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        listener.join(10)
        report(
            started=started,
            applied=applied,
            level=logging.getLevelName(target.level),
            receiver_is_sockherd=isinstance(receiver, sockherd.ThreadingTCPServer),
            stopped=not listener.is_alive(),
        )
        """
    )
    assert result == {
        "started": True,
        "applied": True,
        "level": "DEBUG",
        "receiver_is_sockherd": True,
        "stopped": True,
    }


def test_install_after_http_server_was_imported_raises_runtime_error() -> None:
    result = run_script(
        """
        import http.server
        import sys

        import sockherd

        try:
            sockherd.install()
        except RuntimeError as error:
            message = str(error)
        else:
            message = None
        print(json.dumps({
            "message": message,
            "socketserver_is_sockherd": sys.modules["socketserver"] is sockherd,
        }))
        """,
        prelude="import json\n",
    )
    message = result["message"]
    assert message is not None, "install() did not raise"
    assert "http.server" in message
    assert "install() before" in message
    assert result["socketserver_is_sockherd"] is False


def test_install_twice_is_harmless() -> None:
    result = run_script(
        """
        sockherd.install()  # the prelude already installed it, and imported http.server
        sockherd.install()
        report(
            socketserver_is_sockherd=sys.modules["socketserver"] is sockherd,
            http_server=sockherd.TCPServer in http.server.HTTPServer.__mro__,
        )
        """
    )
    assert result == {"socketserver_is_sockherd": True, "http_server": True}
