"""The live record of a worker's slot: what it stores, and describe_request()'s contract."""

from __future__ import annotations

import functools
import http.server
import os

import pytest

import sockherd
from sockherd.workers import live_record
from sockherd.workers.scoreboard import Scoreboard


@pytest.fixture
def slot(monkeypatch):
    # Unmapped when collected: pytest holds the slot until then.  An anonymous mapping, not
    # a memfd, whose mmap would hold a descriptor as long.
    monkeypatch.delattr(os, "memfd_create", raising=False)
    scoreboard = Scoreboard(2)
    try:
        yield scoreboard.slots[0]
    finally:
        live_record.detach()


def test_truncation_never_splits_a_character():
    text = "é" * 100  # two bytes each
    cut = live_record.encode_truncated(text, 7)
    assert cut == "é".encode() * 3
    assert cut.decode("utf-8") == "ééé"
    assert live_record.encode_truncated("€uro", 2) == b""  # a 3-byte character does not fit
    assert live_record.encode_truncated("abc", 10) == b"abc"


def test_begin_records_the_peer_and_the_reader_falls_back_to_it(slot):
    live_record.begin(slot, ("127.0.0.1", 5555), 12.5)
    assert slot.request_started == 12.5
    assert live_record.read(slot) == ("127.0.0.1:5555", "127.0.0.1:5555")
    live_record.begin(slot, ("::1", 80, 0, 0), 13.0)
    assert live_record.read(slot)[1] == "[::1]:80"
    live_record.begin(slot, "/run/app.sock", 13.0)
    assert live_record.read(slot)[1] == "/run/app.sock"
    live_record.begin(slot, b"", 13.0)  # an unnamed Unix peer
    assert live_record.read(slot)[1] == "-"


def test_describe_request_writes_the_attached_slot_only(slot):
    sockherd.describe_request("outside a worker")  # no slot attached: nothing happens
    assert live_record.read(slot) == ("", "")
    live_record.attach(slot)
    live_record.begin(slot, ("10.0.0.1", 1), 1.0)
    sockherd.describe_request("job 42 — résumé " + "x" * 400)
    description, peer = live_record.read(slot)
    assert peer == "10.0.0.1:1"
    assert description.startswith("job 42 — résumé x")
    assert len(description.encode()) <= live_record.DESCRIPTION_BYTES
    live_record.begin(slot, ("10.0.0.1", 2), 2.0)  # the next request starts undescribed
    assert live_record.read(slot)[0] == "10.0.0.1:2"


def test_a_process_forked_by_a_worker_has_no_record(slot):
    live_record.attach(slot)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if live_record._slot is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_http_handlers_describe_each_request_by_its_request_line(slot):
    class Handler(http.server.BaseHTTPRequestHandler):
        pass

    class FakeServer:
        RequestHandlerClass = Handler

    server = FakeServer()
    live_record.describe_http_requests(server)
    wrapped = server.RequestHandlerClass
    assert issubclass(wrapped, Handler) and wrapped.__name__ == "Handler"
    live_record.attach(slot)
    live_record.begin(slot, ("127.0.0.1", 9), 1.0)
    handler = wrapped.__new__(wrapped)
    handler.raw_requestline = b"GET /big HTTP/1.1\r\n"
    handler.rfile = __import__("io").BytesIO(b"\r\n")
    handler.wfile = __import__("io").BytesIO()
    handler.client_address = ("127.0.0.1", 9)
    handler.request_version = "HTTP/1.1"
    assert handler.parse_request()
    assert live_record.read(slot)[0] == "GET /big HTTP/1.1"


def test_a_partial_of_an_http_handler_keeps_its_arguments(tmp_path):
    class FakeServer:
        RequestHandlerClass = functools.partial(
            http.server.SimpleHTTPRequestHandler, directory=str(tmp_path)
        )

    server = FakeServer()
    live_record.describe_http_requests(server)
    wrapped = server.RequestHandlerClass
    assert isinstance(wrapped, functools.partial)
    assert issubclass(wrapped.func, http.server.SimpleHTTPRequestHandler)
    assert wrapped.func is not http.server.SimpleHTTPRequestHandler
    assert wrapped.keywords == {"directory": str(tmp_path)}


def test_non_http_handlers_are_left_alone():
    class FakeServer:
        RequestHandlerClass = sockherd.StreamRequestHandler

    server = FakeServer()
    live_record.describe_http_requests(server)
    assert server.RequestHandlerClass is sockherd.StreamRequestHandler
