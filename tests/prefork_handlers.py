"""Request handlers the prefork tests serve, importable by a `sockherd serve` subprocess."""

from __future__ import annotations

import os
import time

import sockherd


class Commands(sockherd.StreamRequestHandler):
    """Reads one line: `echo X` answers "PID X"; `sleep S X` does so after S seconds;
    `hang` never answers; `raise` fails the handler."""

    def handle(self):
        line = self.rfile.readline().decode().strip()
        command, _, argument = line.partition(" ")
        if command == "sleep":
            seconds, _, argument = argument.partition(" ")
            time.sleep(float(seconds))
        elif command == "hang":
            while True:
                time.sleep(3600)
        elif command == "raise":
            raise ValueError("the handler failed on purpose")
        self.wfile.write(f"{os.getpid()} {argument}\n".encode())


class BrokenSetupServer(sockherd.PreforkTCPServer):
    """A server whose workers fail while booting."""

    def worker_setup(self):
        raise ImportError("simulated failure while a worker boots")
