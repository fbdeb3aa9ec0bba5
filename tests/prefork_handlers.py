"""Request handlers the prefork tests serve, importable by a `sockherd serve` subprocess."""

from __future__ import annotations

import gc
import http.server
import os
import select
import threading
import time

import sockherd

HOARD: list[bytearray] = []


class Commands(sockherd.StreamRequestHandler):
    """Reads one line: `echo X` answers "PID X"; `sleep S X` does so after S seconds;
    `hold X` does so once the client sends one more line, waiting for it in select() (the
    handler stays busy, as one waiting for a backend would); `park X` reads that line
    (a threaded worker's connection parks: waiting for its client, it is not busy);
    `hang` never answers; `raise` fails the handler; `hoard MB` keeps MB mebibytes;
    `orphan S` abandons a grandchild that lives S seconds and answers its pid;
    `gc` answers whether the collector is enabled and how many objects are frozen."""

    def handle(self):
        line = self.rfile.readline().decode().strip()
        command, _, argument = line.partition(" ")
        if command == "sleep":
            seconds, _, argument = argument.partition(" ")
            time.sleep(float(seconds))
        elif command == "hold":
            select.select([self.connection], [], [])  # the test decides when the request ends
            self.rfile.readline()
        elif command == "park":
            self.rfile.readline()
        elif command == "hang":
            while True:
                time.sleep(3600)
        elif command == "hoard":
            HOARD.append(bytearray(int(argument) * 1024 * 1024))  # kept: the worker grows
        elif command == "orphan":
            argument = str(self.abandon_a_grandchild(float(argument or 0.3)))
        elif command == "gc":  # the collector's state in the process serving the request
            argument = f"{gc.isenabled()} {gc.get_freeze_count()}"
        elif command == "raise":
            raise ValueError("the handler failed on purpose")
        self.wfile.write(f"{os.getpid()} {argument}\n".encode())

    @staticmethod
    def abandon_a_grandchild(lifetime: float) -> int:
        """The daemonising double fork: return the pid of a grandchild left to the reaper."""
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            grandchild = os.fork()
            if grandchild == 0:
                os.closerange(3, 1024)  # leave the client's connection alone
                time.sleep(lifetime)
                os._exit(0)
            os.write(write_end, str(grandchild).encode())
            os._exit(0)
        os.waitpid(child, 0)
        os.close(write_end)
        pid = int(os.read(read_end, 20))
        os.close(read_end)
        return pid


class BrokenSetupServer(sockherd.PreforkTCPServer):
    """A server whose workers fail while booting."""

    def worker_setup(self):
        raise ImportError("simulated failure while a worker boots")


class Gathering(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive.  `GET /gather/N` answers once N requests of this worker
    process are in it at once (a `threading.Barrier`, 30 s at most: a 500 after that);
    any other GET answers at once.  The body is the worker's pid."""

    protocol_version = "HTTP/1.1"
    barriers: dict[int, threading.Barrier] = {}
    lock = threading.Lock()

    def do_GET(self) -> None:
        status = 200
        if self.path.startswith("/gather/"):
            count = int(self.path.rsplit("/", 1)[1])
            with self.lock:
                barrier = self.barriers.setdefault(count, threading.Barrier(count, timeout=30))
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                status = 500
        body = str(os.getpid()).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass
