"""The module surface of sockherd, checked against the running interpreter's stock `socketserver`.

Names, `__all__`, class attributes and their defaults, method signatures, the class
hierarchy and MRO, lazily created per-instance state, import side effects, and the
constructor paths CPython's own suite exercises (test_close_immediately,
test_tcpserver_bind_leak, test_logging's ControlMixin).  The `Prefork*Server` classes
are held to their socket server's stock surface; the construction paths run on every
server kind (`server_kind`, server_kinds.py), and on CPython's where stock pins them down.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import socketserver as stock
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import child_processes, tcp_request
from server_kinds import Recorder, ServerKind, each_kind, recording_handler

import sockherd

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
HAS_FORK = hasattr(os, "fork")
HAS_UNIX = hasattr(socket, "AF_UNIX")


def _cpython_313_all() -> list[str]:
    """`socketserver.__all__` exactly as CPython 3.13 computes it on this platform."""
    names = [
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
    if HAS_FORK:
        names.extend(["ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn"])
    if HAS_UNIX:
        names.extend(
            [
                "UnixStreamServer",
                "UnixDatagramServer",
                "ThreadingUnixStreamServer",
                "ThreadingUnixDatagramServer",
            ]
        )
        if HAS_FORK:
            names.extend(["ForkingUnixStreamServer", "ForkingUnixDatagramServer"])
    return names


CPYTHON_313_ALL = _cpython_313_all()
SOCKHERD_EXTRA_NAMES = ["BindError", "install", "describe_request"]
if HAS_FORK:
    SOCKHERD_EXTRA_NAMES += ["PreforkMixIn", "PreforkTCPServer", "PreforkUDPServer"]
    if hasattr(socket, "AF_UNIX"):
        SOCKHERD_EXTRA_NAMES += ["PreforkUnixStreamServer", "PreforkUnixDatagramServer"]
# Each prefork class and the stock socket server whose surface it keeps.
PREFORK_COUNTERPARTS = {
    name: name.removeprefix("Prefork") for name in SOCKHERD_EXTRA_NAMES if name.endswith("Server")
}
# The predefined mix-in + socket server combinations.
COMBINATIONS = [
    name
    for name in CPYTHON_313_ALL
    if name.startswith(("Threading", "Forking")) and not name.endswith("MixIn")
]
SOCKET_SERVERS = [
    name for name in CPYTHON_313_ALL if name.endswith("Server") and name != "BaseServer"
]
# Public class attributes sockherd adds on purpose (documented in the mix-in docstrings).
SOCKHERD_EXTRA_ATTRIBUTES = {
    "accept_errors",
    "close_timeout",
    "freeze_heap",
    "child_exit_counts",
    "fork_errors",
    "loop_hooks",
    "loop_members",
    "read_timeout",
    "request_stats",
    "serving",
}
# The extension points the layers above use (documented in sockherd/server/base_server.py).
SOCKHERD_EXTRA_METHODS = {
    "accept_failed",
    "accept_paused_for",
    "accepting",
    "add_wake_source",
    "attach_loop_hooks",
    "backlog_waiting",
    "close_loop_fds",
    "detach_loop_hooks",
    "join_loop",
    "remove_wake_source",
}
# Private methods that subclasses override or call (odoo, test_socketserver).
RELIED_ON_PRIVATE_METHODS = ("_handle_request_noblock",)
RELIED_ON_DUNDER_METHODS = ("__init__", "__enter__", "__exit__")


@functools.cache
def _stock_class(name: str) -> type:
    """Stock's class `name`; on 3.11 the 3.12 Forking Unix classes are built as 3.12 does.
    For a prefork class, the stock socket server it extends."""
    name = PREFORK_COUNTERPARTS.get(name, name)
    if hasattr(stock, name):
        return getattr(stock, name)
    socket_server = name.removeprefix("Forking")
    assert name.startswith("Forking") and socket_server in (
        "UnixStreamServer",
        "UnixDatagramServer",
    )
    return type(name, (stock.ForkingMixIn, getattr(stock, socket_server)), {})


def _public_data_attributes(cls: type) -> dict[str, object]:
    return {
        name: getattr(cls, name)
        for name in dir(cls)
        if not name.startswith("_") and not callable(getattr(cls, name))
    }


def _method_names(cls: type) -> set[str]:
    names = {
        name
        for name in dir(cls)
        if not name.startswith("_")
        and callable(getattr(cls, name))
        and not isinstance(getattr(cls, name), type)
    }
    return names | {name for name in RELIED_ON_PRIVATE_METHODS if hasattr(cls, name)}


def _signature_without_annotations(function: object) -> inspect.Signature:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    return signature.replace(
        parameters=[
            parameter.replace(annotation=inspect.Parameter.empty)
            for parameter in signature.parameters.values()
        ],
        return_annotation=inspect.Signature.empty,
    )


def _open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))


# --- names and __all__ -----------------------------------------------------------------


def test_all_contains_every_stock_name():
    missing = [name for name in stock.__all__ if name not in sockherd.__all__]
    assert missing == []
    assert all(hasattr(sockherd, name) for name in stock.__all__)


def test_all_is_cpython_313_list_plus_sockherd_extras():
    assert len(set(sockherd.__all__)) == len(sockherd.__all__)
    assert sorted(sockherd.__all__) == sorted(CPYTHON_313_ALL + SOCKHERD_EXTRA_NAMES)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="3.11 lacks the Forking Unix classes")
def test_computed_cpython_313_list_matches_running_stock():
    """Guards the expectation above: on 3.12+ it is exactly stock's own `__all__`."""
    assert sorted(stock.__all__) == sorted(CPYTHON_313_ALL)


def test_all_lists_exactly_the_objects_defined_in_sockherd():
    """CPython's MiscTestCase.test_all rule, under the name `sockherd`."""
    expected = [
        name
        for name in dir(sockherd)
        if not name.startswith("_")
        and getattr(getattr(sockherd, name), "__module__", None) == "sockherd"
    ]
    assert sorted(sockherd.__all__) == sorted(expected)


def test_version_string_matches_stock():
    assert sockherd.__version__ == "0.4"
    assert sockherd.__version__ == stock.__version__


def test_sockherd_extras_are_an_oserror_and_a_function():
    assert issubclass(sockherd.BindError, OSError)
    assert inspect.isfunction(sockherd.install)


# --- class attributes ------------------------------------------------------------------


@pytest.mark.parametrize("name", CPYTHON_313_ALL + list(PREFORK_COUNTERPARTS))
def test_class_has_stock_public_attributes_with_stock_defaults(name):
    ours = _public_data_attributes(getattr(sockherd, name))
    theirs = _public_data_attributes(_stock_class(name))
    assert set(theirs) - set(ours) == set()
    for attribute, value in theirs.items():
        if attribute == "request_queue_size":
            continue  # deliberately different, see the next test
        assert (attribute, type(ours[attribute]), ours[attribute]) == (
            attribute,
            type(value),
            value,
        )
    extras = SOCKHERD_EXTRA_ATTRIBUTES
    if name in PREFORK_COUNTERPARTS:  # a pool's settings are class attributes too
        extras = extras | set(_public_data_attributes(sockherd.PreforkMixIn))
    assert set(ours) - set(theirs) <= extras


@pytest.mark.parametrize("name", SOCKET_SERVERS + list(PREFORK_COUNTERPARTS))
def test_request_queue_size_defaults_to_somaxconn_where_stock_uses_5(name):
    assert _stock_class(name).request_queue_size == 5
    assert getattr(sockherd, name).request_queue_size == getattr(socket, "SOMAXCONN", 5)


@pytest.mark.parametrize(
    ("name", "attribute", "default"),
    [
        ("BaseServer", "timeout", None),
        ("TCPServer", "address_family", socket.AF_INET),
        ("TCPServer", "socket_type", socket.SOCK_STREAM),
        ("TCPServer", "allow_reuse_address", False),
        ("TCPServer", "allow_reuse_port", False),
        ("UDPServer", "socket_type", socket.SOCK_DGRAM),
        ("UDPServer", "max_packet_size", 8192),
        ("ThreadingMixIn", "daemon_threads", False),
        ("ThreadingMixIn", "block_on_close", True),
        ("StreamRequestHandler", "rbufsize", -1),
        ("StreamRequestHandler", "wbufsize", 0),
        ("StreamRequestHandler", "timeout", None),
        ("StreamRequestHandler", "disable_nagle_algorithm", False),
    ]
    + (
        [
            ("ForkingMixIn", "timeout", 300),
            ("ForkingMixIn", "max_children", 40),
            ("ForkingMixIn", "block_on_close", True),
            ("ForkingTCPServer", "timeout", 300),
        ]
        if HAS_FORK
        else []
    )
    + ([("UnixStreamServer", "address_family", socket.AF_UNIX)] if HAS_UNIX else []),
)
def test_documented_default(name, attribute, default):
    assert getattr(getattr(sockherd, name), attribute) == default
    assert getattr(_stock_class(name), attribute) == default


def test_close_timeout_defaults_to_waiting_forever():
    assert sockherd.ThreadingMixIn.close_timeout is None
    if HAS_FORK:
        assert sockherd.ForkingMixIn.close_timeout is None


# --- methods ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CPYTHON_313_ALL)
def test_class_has_the_same_method_names_as_stock(name):
    ours = _method_names(getattr(sockherd, name))
    assert ours - SOCKHERD_EXTRA_METHODS == _method_names(_stock_class(name))


@pytest.mark.parametrize("name", CPYTHON_313_ALL + list(PREFORK_COUNTERPARTS))
def test_methods_have_stock_signatures(name):
    """Every stock method keeps its signature; a prefork class's __init__ adds keyword
    settings (see test_prefork_constructor_extends_the_stock_one_with_keyword_settings_only)."""
    ours, theirs = getattr(sockherd, name), _stock_class(name)
    dunders = [dunder for dunder in RELIED_ON_DUNDER_METHODS if dunder in dir(theirs)]
    if name in PREFORK_COUNTERPARTS:
        dunders.remove("__init__")
    method_names = sorted(_method_names(theirs)) + dunders
    for method in method_names:
        if getattr(theirs, method) is object.__init__:
            assert getattr(ours, method) is object.__init__, method
            continue
        assert (method, _signature_without_annotations(getattr(ours, method))) == (
            method,
            _signature_without_annotations(getattr(theirs, method)),
        )


@pytest.mark.parametrize("name", list(PREFORK_COUNTERPARTS))
def test_prefork_constructor_extends_the_stock_one_with_keyword_settings_only(name):
    ours = list(
        _signature_without_annotations(getattr(sockherd, name).__init__).parameters.values()
    )
    theirs = list(_signature_without_annotations(_stock_class(name).__init__).parameters.values())
    assert ours[: len(theirs)] == theirs
    assert [parameter.kind for parameter in ours[len(theirs) :]] == [inspect.Parameter.VAR_KEYWORD]


def test_process_request_thread_signature_matches_stock():
    assert _signature_without_annotations(
        sockherd.ThreadingMixIn.process_request_thread
    ) == inspect.signature(stock.ThreadingMixIn.process_request_thread)


@pytest.mark.skipif(not HAS_FORK, reason="no os.fork")
def test_collect_children_takes_keyword_only_blocking():
    parameters = inspect.signature(sockherd.ForkingMixIn.collect_children).parameters
    assert list(parameters) == ["self", "blocking"]
    assert parameters["blocking"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["blocking"].default is False


# --- hierarchy -------------------------------------------------------------------------


def test_issubclass_relations_match_stock():
    classes = [name for name in CPYTHON_313_ALL if isinstance(getattr(sockherd, name), type)]
    differing = [
        (sub, sup)
        for sub in classes
        for sup in classes
        if issubclass(getattr(sockherd, sub), getattr(sockherd, sup))
        != issubclass(_stock_class(sub), _stock_class(sup))
    ]
    assert differing == []


@pytest.mark.skipif(not HAS_UNIX, reason="no AF_UNIX")
def test_unix_datagram_server_is_not_a_unix_stream_server():
    assert not issubclass(sockherd.UnixDatagramServer, sockherd.UnixStreamServer)
    assert issubclass(sockherd.UnixDatagramServer, sockherd.UDPServer)


@pytest.mark.parametrize("name", COMBINATIONS)
def test_combination_mro_matches_stock_with_mixin_first(name):
    ours = getattr(sockherd, name).__mro__
    assert [cls.__name__ for cls in ours] == [cls.__name__ for cls in _stock_class(name).__mro__]
    assert ours[1].__name__.endswith("MixIn")
    assert all(cls.__module__ == "sockherd" for cls in ours[:-1])  # none of stock's classes


@pytest.mark.parametrize("name", list(PREFORK_COUNTERPARTS))
def test_prefork_class_is_its_socket_server_with_the_mixin_first(name):
    cls = getattr(sockherd, name)
    assert issubclass(cls, getattr(sockherd, PREFORK_COUNTERPARTS[name]))
    assert cls.__mro__[1] is sockherd.PreforkMixIn
    if name == "PreforkUnixDatagramServer":
        assert issubclass(cls, sockherd.UDPServer)
        assert not issubclass(cls, sockherd.UnixStreamServer)


def test_mixins_define_no_init():
    mixins = [sockherd.ThreadingMixIn]
    mixins += [sockherd.ForkingMixIn, sockherd.PreforkMixIn] if HAS_FORK else []
    assert [mixin for mixin in mixins if "__init__" in vars(mixin)] == []


# --- lazily created state --------------------------------------------------------------


def test_threads_is_a_class_level_no_threads_default(ss):
    assert type(ss.ThreadingMixIn._threads).__name__ == "_NoThreads"
    with ss.ThreadingTCPServer((HOST, 0), ss.StreamRequestHandler) as server:
        assert "_threads" not in vars(server)
        assert server._threads is ss.ThreadingMixIn._threads


@pytest.mark.skipif(not HAS_FORK, reason="no os.fork")
def test_active_children_is_none_before_first_fork(ss):
    assert ss.ForkingMixIn.active_children is None
    with ss.ForkingTCPServer((HOST, 0), ss.StreamRequestHandler) as server:
        assert server.active_children is None


class ControlMixin:
    """test_logging's ControlMixin: its __init__ never calls super().__init__()."""

    def __init__(self, handler, poll_interval):
        self._thread = None
        self.poll_interval = poll_interval
        self._handler = handler
        self.ready = threading.Event()

    def start(self):
        self._thread = thread = threading.Thread(
            target=self.serve_forever, args=(self.poll_interval,), daemon=True
        )
        thread.start()

    def serve_forever(self, poll_interval):
        self.ready.set()
        super().serve_forever(poll_interval)

    def stop(self):
        self.shutdown()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.server_close()
        self.ready.clear()


def _control_server_class(kind: ServerKind, transport: str) -> type:
    """test_logging's server classes: ControlMixin first, then the kind's class, configured
    by class attributes (a pool's settings too: this __init__ passes none)."""
    base = kind.server_class(transport)
    module = kind.module
    stream = base.socket_type == socket.SOCK_STREAM

    class Delegating(module.StreamRequestHandler if stream else module.DatagramRequestHandler):
        def handle(self):
            self.server._handler(self)

    class ControlServer(ControlMixin, base):
        def __init__(self, addr, handler, poll_interval=0.5, bind_and_activate=True):
            base.__init__(self, addr, Delegating, bind_and_activate)
            ControlMixin.__init__(self, handler, poll_interval)

        def server_bind(self):
            super().server_bind()
            self.port = self.socket.getsockname()[1]

    for name, value in kind.class_settings().items():
        setattr(ControlServer, name, value)
    return ControlServer


def _upper_line(request):
    request.wfile.write(request.rfile.readline().upper())


@each_kind(stock=("thread", "fork"))
def test_control_mixin_calling_base_init_directly_serves_tcp(server_kind):
    server = _control_server_class(server_kind, "TCP")((HOST, 0), _upper_line, 0.05)
    server.start()
    try:
        assert server.ready.wait(5)
        assert tcp_request((HOST, server.port), b"ping\n") == b"PING\n"
    finally:
        server.stop()
    assert server.socket.fileno() == -1


@each_kind(stock=("thread",))
def test_control_mixin_calling_base_init_directly_serves_udp(server_kind):
    server = _control_server_class(server_kind, "UDP")((HOST, 0), _upper_line, 0.05)
    server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"ping\n", (HOST, server.port))
            assert client.recvfrom(100) == (b"PING\n", (HOST, server.port))
    finally:
        server.stop()


def _composed_class(kind: ServerKind) -> type:
    """A user's own class: the kind's mix-in (none for sync) and TCPServer, configured by
    class attributes."""
    bases = (kind.mixin, kind.module.TCPServer) if kind.mixin else (kind.module.TCPServer,)
    return type("MyServer", bases, kind.class_settings())


@each_kind(stock=("thread",))
def test_user_composed_class_serves_where_its_mixin_handles_requests(
    server_kind: ServerKind, recorder: Recorder
) -> None:
    """class MyServer(XMixIn, TCPServer): the mix-in's process_request is the one that runs,
    so the handler runs in a thread, a forked child or a pool's worker."""
    server = _composed_class(server_kind)((HOST, 0), recording_handler(server_kind, recorder))
    with server_kind.serving(server) as loop:
        assert tcp_request(server.server_address) == b"echo:ping\n"
        workers = server_kind.worker_pids(server)
    assert recorder.where("handle", loop) == {server_kind.handler_place}
    if server_kind.prefork:
        assert recorder.pids("handle") == workers


# --- construction and close --------------------------------------------------------------


@pytest.mark.parametrize("composed", [False, True], ids=["predefined", "composed"])
@each_kind(stock=("thread", "fork"))
def test_server_close_works_on_a_server_that_never_served(server_kind, composed):
    """test_close_immediately: the handler class is a lambda and nothing was ever served;
    nothing was forked either."""
    cls = _composed_class(server_kind) if composed else server_kind.server_class()
    server = cls((HOST, 0), lambda *args: None)
    server.server_close()
    assert server.socket.fileno() == -1
    assert child_processes() == set()


def test_tcp_server_without_bind_and_activate_creates_unbound_socket(ss):
    server = ss.TCPServer((HOST, 0), ss.StreamRequestHandler, bind_and_activate=False)
    try:
        assert server.socket.fileno() >= 0
        assert server.socket.family == socket.AF_INET
        assert server.socket.type == socket.SOCK_STREAM
        assert server.socket.getsockname() == ("0.0.0.0", 0)
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
        assert server.server_address == (HOST, 0)
    finally:
        server.server_close()


@each_kind(stock=("sync",))
def test_server_binds_and_listens_when_asked_after_construction(
    server_kind: ServerKind, recorder: Recorder
) -> None:
    server = server_kind.server(
        (HOST, 0), recording_handler(server_kind, recorder), bind_and_activate=False
    )
    try:
        assert server.socket.getsockname() == ("0.0.0.0", 0)
        server.allow_reuse_address = True  # read at bind time, per instance
        server.server_bind()
        server.server_activate()
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert server.server_address == server.socket.getsockname()
        assert server.server_address[1] != 0
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    except BaseException:
        server.server_close()
        raise
    with server_kind.serving(server):
        assert tcp_request(server.server_address) == b"echo:ping\n"


@each_kind(stock=("sync",))
def test_failed_bind_closes_socket_over_1024_constructions(server_kind: ServerKind) -> None:
    """test_tcpserver_bind_leak (Issue #22435), with every failed server kept alive.

    The exceptions' tracebacks keep each half-built server (and its socket) referenced,
    so only an explicit close in `__init__` keeps the fd count flat; and nothing forks.
    """
    fds_before = _open_fd_count()
    errors = []
    for _ in range(1024):
        with pytest.raises(OverflowError) as caught:
            server_kind.server((HOST, -1), server_kind.module.StreamRequestHandler)
        errors.append(caught.value)
    assert _open_fd_count() <= fds_before
    assert child_processes() == set()
    del errors


def test_import_has_no_stdlib_server_side_effects():
    """A fresh interpreter importing sockherd must not pull in modules that bind socketserver."""
    code = (
        "import json, sys\n"
        "import sockherd\n"
        "unwanted = sorted(\n"
        "    m for m in sys.modules\n"
        "    if m in ('http.server', 'socketserver', 'prometheus_client.exposition')\n"
        "    or m == 'wsgiref' or m.startswith('wsgiref.')\n"
        ")\n"
        "print(json.dumps({'file': sockherd.__file__, 'unwanted': unwanted}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert Path(report["file"]).resolve() == (REPO / "sockherd" / "__init__.py").resolve()
    assert report["unwanted"] == []
