"""Request handlers the operator's-view tests serve (importable by a server subprocess)."""

from __future__ import annotations

import http.server
import os
import time

import sockherd


def deliberately_slow(seconds: float) -> None:
    """Sleep inside a function whose name the slow-request traceback must show."""
    time.sleep(seconds)


class Lines(sockherd.StreamRequestHandler):
    """Reads one line `COMMAND ARG [DESCRIPTION...]`: `hold` answers once the client sends
    another line, `slow S` sleeps S seconds in deliberately_slow(); each first calls
    describe_request(DESCRIPTION) when one is given.  Answers "PID ARG"."""

    def handle(self) -> None:
        line = self.rfile.readline().decode().strip()
        command, _, rest = line.partition(" ")
        argument, _, description = rest.partition(" ")
        if description:
            sockherd.describe_request(description)
        if command == "hold":
            self.rfile.readline()
        elif command == "slow":
            deliberately_slow(float(argument))
        self.wfile.write(f"{os.getpid()} {argument}\n".encode())


class Web(http.server.BaseHTTPRequestHandler):
    """GET /sleep/S sleeps S seconds; GET /big/MB allocates and touches MB mebibytes
    (past a cgroup's memory limit: the kernel's OOM killer ends the worker)."""

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts[0] == "sleep":
            deliberately_slow(float(parts[1]))
        elif parts[0] == "big":
            hoard = bytearray(int(parts[1]) * 1024 * 1024)
            for offset in range(0, len(hoard), 4096):
                hoard[offset] = 1
        body = f"{os.getpid()} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass
