"""In-place upgrade (`ctl upgrade`, SIGUSR2): the supervisor execs its new code, keeps its
pid, its sockets and its workers, and only lets the old workers go once the new ones are
ready.  Real `sockherd serve` processes, a real app module rewritten between upgrades,
clients opening a new connection per request throughout."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import wait_until
from server_process import metric_value, request_line, server_process
from test_cli import PROJECT_ROOT, ctl, free_port, scrape

pytestmark = pytest.mark.skipif(
    not (hasattr(os, "memfd_create") and hasattr(os, "pidfd_open")),
    reason="an in-place upgrade needs Linux (memfd, pidfd)",
)

APP = """\
import os, time
import sockherd

VERSION = {version!r}
time.sleep({import_delay})  # a slow import: the pre-flight and the new image take this long


class Handler(sockherd.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().strip()
        if line == b"orphan":
            if os.fork() == 0:
                if os.fork() == 0:
                    os.closerange(3, 1024)
                    time.sleep(0.2)
                    os._exit(0)
                os._exit(0)
            os.wait()
        self.wfile.write(VERSION.encode() + b"\\n")


class Server(sockherd.PreforkTCPServer):
    allow_reuse_address = True
    workers = 2
    handoff = {handoff!r}

    def worker_setup(self):
        if {broken_setup}:
            raise RuntimeError("worker_setup() fails in this version")


def make_server():
    return Server(("127.0.0.1", {port}), Handler)
"""


class Supervisor:
    """`sockherd serve app:make_server` in a subprocess, its log in a file."""

    def __init__(
        self,
        tmp_path,
        port: int,
        *extra: str,
        prefix: tuple[str, ...] = (),
        handoff: str = "accept",
    ) -> None:
        self.tmp_path, self.port, self.handoff = tmp_path, port, handoff
        self.control = str(tmp_path / "control.sock")
        self.metrics = free_port()
        self.log_path = tmp_path / "supervisor.log"
        self.write_app("v0")
        env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{PROJECT_ROOT}", PYTHONDONTWRITEBYTECODE="1")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "sockherd", "serve", "app:make_server",
                 "--control", self.control, "--metrics", f"127.0.0.1:{self.metrics}",
                 "--upgrade-timeout", "20", *extra],
                cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        self.wait_log("2 workers ready", timeout=30)

    def write_app(self, version: str, *, broken_setup=False, syntax_error=False, delay=0.0):
        text = APP.format(
            version=version,
            port=self.port,
            broken_setup=broken_setup,
            import_delay=delay,
            handoff=self.handoff,
        )
        if syntax_error:
            text += "\ndef broken(:\n"
        (self.tmp_path / "app.py").write_text(text)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 20.0, count: int = 1) -> None:
        def found() -> bool:
            assert self.process.poll() is None, f"the supervisor died:\n{self.log}"
            return self.log.count(text) >= count

        wait_until(found, timeout=timeout, interval=0.02)

    def status(self) -> dict:
        return json.loads(ctl(self.control, "status", "--json").stdout)

    def requests_total(self) -> float:
        body = scrape(self.metrics)
        return sum(
            float(m) for m in re.findall(r"^sockherd_requests_total\{.*\} (\S+)$", body, re.M)
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture(params=["accept"])
def supervisor(request, tmp_path) -> Iterator[Supervisor]:
    running = Supervisor(tmp_path, free_port(), handoff=request.param)
    try:
        yield running
    finally:
        assert running.stop() == 0, running.log


def ask(port: int, line: bytes = b"hi") -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(line + b"\n")
        return client.makefile("rb").readline().decode().strip()


class Load:
    """Clients in threads, each a new connection per request, until stopped (bounded)."""

    def __init__(self, port: int, clients: int = 4, limit: float = 150.0) -> None:
        self.port, self.stopping = port, threading.Event()
        self.results: list[tuple[float, float, str]] = []  # (when, seconds, version or error)
        self.deadline = time.monotonic() + limit
        self.threads = [threading.Thread(target=self.run) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            began = time.monotonic()
            try:
                answer = ask(self.port)
            except OSError as error:
                answer = f"error: {error!r}"
            self.results.append((began, time.monotonic() - began, answer))

    def stop(self) -> list[tuple[float, float, str]]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
        return self.results


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[int(len(ordered) * 0.99)] if ordered else 0.0


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("supervisor", "upgrades"), [("accept", 10), ("dispatch", 3)], indirect=["supervisor"]
)
def test_ten_upgrades_under_load_lose_nothing_and_keep_the_pid(supervisor, upgrades):
    pid = supervisor.status()["pid"]
    assert pid == supervisor.process.pid
    load = Load(supervisor.port)
    try:
        wait_until(lambda: len(load.results) > 3000, timeout=30)  # the baseline
        baseline_end = time.monotonic()
        totals = [supervisor.requests_total()]
        for number in range(1, upgrades + 1):
            version = f"v{number}"
            supervisor.write_app(version)
            upgrade = ctl(supervisor.control, "upgrade")
            assert upgrade.returncode == 0, (upgrade.stdout, upgrade.stderr, supervisor.log)
            assert f"pid {pid} runs the new code" in upgrade.stdout
            assert ask(supervisor.port) == version  # every worker now runs the new code
            totals.append(supervisor.requests_total())
            status = supervisor.status()
            assert status["pid"] == pid and status["state"] == "running"
            assert status["upgrade"]["outcome"] == "ok" and status["images"] == number + 1
    finally:
        results = load.stop()
    failures = [answer for _, _, answer in results if not answer.startswith("v")]
    assert failures == [], failures[:5]
    assert totals == sorted(totals), totals  # sockherd_requests_total never decreases
    body = scrape(supervisor.metrics)
    assert metric_value(body, "sockherd_upgrades_total", outcome="ok") == upgrades
    assert metric_value(body, "sockherd_supervisor_images") == upgrades + 1
    before = [seconds for began, seconds, _ in results if began < baseline_end]
    during = [seconds for began, seconds, _ in results if began >= baseline_end]
    print(
        f"\n{supervisor.handoff}: {len(results)} requests, 0 failed; "
        f"p99 without upgrades {p99(before) * 1000:.1f} ms "
        f"({len(before)} requests), during {upgrades} upgrades {p99(during) * 1000:.1f} ms "
        f"({len(during)} requests)"
    )


@pytest.mark.timeout(180)
def test_a_broken_new_version_leaves_the_old_one_serving(supervisor):
    load = Load(supervisor.port, clients=2)
    try:
        wait_until(lambda: len(load.results) > 50, timeout=20)
        supervisor.write_app("v1", syntax_error=True)
        upgrade = ctl(supervisor.control, "upgrade")
        assert upgrade.returncode == 1
        assert "preflight_failed" in upgrade.stderr and "SyntaxError" in upgrade.stderr
        assert "Traceback" in supervisor.log  # the whole traceback is in the log

        supervisor.write_app("v2", broken_setup=True)
        upgrade = subprocess.run(
            [sys.executable, "-m", "sockherd", "ctl", "--control", supervisor.control, "upgrade"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert upgrade.returncode == 1
        assert "not_ready" in upgrade.stderr and "upgrade_timeout" in upgrade.stderr
        supervisor.wait_log("worker_setup() raised")
        assert ask(supervisor.port) == "v0"
    finally:
        results = load.stop()
    answers = {answer for _, _, answer in results}
    assert answers == {"v0"}, answers  # 100 % served by the old version, nothing failed
    body = scrape(supervisor.metrics)
    assert metric_value(body, "sockherd_upgrades_total", outcome="preflight_failed") == 1
    assert metric_value(body, "sockherd_upgrades_total", outcome="not_ready") == 1
    assert supervisor.status()["state"] == "running"


@pytest.mark.timeout(120)
def test_a_second_upgrade_or_a_reload_during_an_upgrade_is_refused(supervisor):
    supervisor.write_app("v1", delay=2.0)  # the pre-flight takes two seconds
    first = subprocess.Popen(
        [sys.executable, "-m", "sockherd", "ctl", "--control", supervisor.control, "upgrade"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: supervisor.status()["state"] == "upgrading", timeout=10)
        second = ctl(supervisor.control, "upgrade")
        assert second.returncode == 1 and "already in progress" in second.stderr
        reload = ctl(supervisor.control, "reload")
        assert reload.returncode == 1 and "upgrading" in reload.stdout
        supervisor.process.send_signal(signal.SIGHUP)
        supervisor.wait_log("reload: an upgrade is in progress; ignored")
        out, err = first.communicate(timeout=90)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, (out, err, supervisor.log)
    assert ask(supervisor.port) == "v1"


@pytest.mark.timeout(120)
def test_sigusr2_upgrades_and_counters_carry_over(supervisor):
    for _ in range(20):
        assert ask(supervisor.port) == "v0"
    before = supervisor.requests_total()
    assert before >= 20
    supervisor.write_app("v1")
    supervisor.process.send_signal(signal.SIGUSR2)
    supervisor.wait_log("upgrade done")
    assert ask(supervisor.port) == "v1"
    # The worker counts a request just after its reply: wait for the count.
    wait_until(lambda: supervisor.requests_total() >= before + 1, timeout=10)
    status = supervisor.status()
    assert status["generation"] == 1 and status["restarts"].get("stopped", 0) >= 2


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare as root"
)
def test_as_pid_1_of_a_pid_namespace_an_upgrade_keeps_pid_1_and_reaps_orphans(tmp_path):
    running = Supervisor(
        tmp_path, free_port(), prefix=("unshare", "--pid", "--fork", "--mount-proc")
    )
    try:
        assert running.status()["pid"] == 1
        assert ask(running.port, b"orphan") == "v0"
        wait_until(lambda: running.status()["orphans_reaped"] >= 1, timeout=10)
        running.write_app("v1")
        upgrade = ctl(running.control, "upgrade")
        assert upgrade.returncode == 0, (upgrade.stderr, running.log)
        status = running.status()
        assert status["pid"] == 1 and status["images"] == 2
        assert ask(running.port, b"orphan") == "v1"
        wait_until(lambda: running.status()["orphans_reaped"] >= 2, timeout=10)
    finally:
        supervisor_pid = _only_child(running.process.pid)
        if supervisor_pid:
            os.kill(supervisor_pid, signal.SIGTERM)
        assert running.process.wait(timeout=30) == 0, running.log


def _only_child(pid: int) -> int | None:
    """The one child of `pid` (unshare's: the supervisor, PID 1 inside), if any."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            found = children.read().split()
    except OSError:
        return None
    return int(found[0]) if found else None


@pytest.mark.timeout(60)
def test_a_programs_own_prefork_server_refuses_an_upgrade_and_keeps_serving():
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", {"workers": 1}) as running:
        running.process.send_signal(signal.SIGUSR2)
        running.wait_for("upgrade refused: an in-place upgrade needs the sockherd serve command")
        reply = request_line(running.address, b"echo still\n").split()
        assert reply[1:] == [b"still"]


@pytest.mark.timeout(120)
def test_the_new_image_reads_the_configuration_again(tmp_path):
    port, control = free_port(), str(tmp_path / "control.sock")
    (tmp_path / "app.py").write_text(APP.format(
        version="v0", port=port, broken_setup=False, import_delay=0, handoff="accept"
    ))  # fmt: skip
    config = tmp_path / "sockherd.toml"
    config.write_text(f'mode = "prefork"\nworkers = 2\nbind = ["127.0.0.1:{port}"]\n')
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{PROJECT_ROOT}", PYTHONDONTWRITEBYTECODE="1")
    with open(tmp_path / "log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sockherd", "serve", "app:Handler", "--config", str(config),
             "--control", control],
            cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        wait_until(lambda: "2 workers ready" in (tmp_path / "log").read_text(), timeout=30)
        config.write_text(config.read_text().replace("workers = 2", "workers = 3"))
        upgrade = ctl(control, "upgrade")
        assert upgrade.returncode == 0, (upgrade.stderr, (tmp_path / "log").read_text())
        status = json.loads(ctl(control, "status", "--json").stdout)
        assert status["desired"] == 3 and len(status["workers"]) == 3
        assert status["pid"] == process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


@pytest.mark.timeout(120)
def test_a_stop_during_the_pre_flight_abandons_the_upgrade(supervisor):
    supervisor.write_app("v1", delay=2.0)  # the pre-flight takes two seconds
    from sockherd.supervisor.control import send_command

    assert send_command(supervisor.control, "upgrade")["ok"]  # started; the outcome comes later
    supervisor.wait_log("loading the new code first")
    with socket.create_connection(("127.0.0.1", supervisor.port), timeout=10) as held:
        supervisor.process.send_signal(signal.SIGTERM)
        supervisor.wait_log("stopping gracefully")
        supervisor.wait_log("upgrade abandoned: the supervisor is draining", timeout=20)
        held.sendall(b"hi\n")
        assert held.makefile("rb").readline() == b"v0\n"  # the old code, no exec
    assert supervisor.process.wait(timeout=30) == 0
    assert "upgrade: exec" not in supervisor.log
