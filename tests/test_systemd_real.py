"""docker/systemd/sockherd.service under a real systemd (Debian's 252), run as PID 1 of new
PID, mount, UTS, IPC, network and cgroup namespaces (`unshare`), the way a container runs it.

Nothing of the host is touched: systemd sees only the units of the test (the shipped
service, with ExecStart pointing into the venv, plus a test drop-in and empty stand-ins for
the targets it depends on), a tmpfs on /run, its own loopback, and its own cgroup
subtree, removed afterwards.  Most tests run the venv's interpreter, which lives under
/root: their drop-in turns DynamicUser off and makes /root readable, and shortens the
timeouts; every other line of the unit -- Type=notify, NotifyAccess=main, KillMode=mixed,
the rest of the hardening -- is the shipped one.  One test runs the unit exactly as shipped
(DynamicUser, ProtectHome=yes, PrivateTmp) with Debian's /usr/bin/python3 and the venv's
packages on PYTHONPATH, where they are readable by any user.  Skipped where it cannot run:
not root, no /lib/systemd/systemd, no cgroup v1 name=systemd hierarchy, or a host that
itself runs systemd.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
import uuid
from typing import Any

import psutil
import pytest
from conftest import wait_until
from test_cli import PROJECT_ROOT, TESTS

SYSTEMD = "/lib/systemd/systemd"
CGROUPS = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if (
        not os.access(SYSTEMD, os.X_OK)
        or not shutil.which("unshare")
        or not shutil.which("nsenter")
    ):
        return f"needs {SYSTEMD}, unshare and nsenter"
    if not all(os.access(path, os.W_OK) for path in CGROUPS):
        return "needs writable cgroup v1 name=systemd and unified hierarchies"
    with open("/proc/1/comm") as comm:
        if comm.read().strip() == "systemd":
            return "the host runs systemd: not nesting one in its cgroup tree"
    return None


pytestmark = [
    pytest.mark.skipif(_why_not() is not None, reason=str(_why_not())),
    pytest.mark.timeout(120),
]

SYSTEM_PYTHON = "/usr/bin/python3"
SITE_PACKAGES = sysconfig.get_paths()["purelib"]


def _readable_by_anyone(path: str) -> bool:
    """Whether a process of another uid can reach and read `path` (every directory above
    it searchable, the path itself readable)."""
    path = os.path.abspath(path)
    while True:
        mode = os.stat(path).st_mode
        if not mode & 0o001 or (path != "/" and not mode & 0o004):
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def _why_not_as_shipped() -> str | None:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"needs {SYSTEM_PYTHON}"
    version = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    if version != str(sys.version_info[:2]):
        return f"{SYSTEM_PYTHON} is {version}, the venv's packages are for {sys.version_info[:2]}"
    for path in (PROJECT_ROOT, TESTS, SITE_PACKAGES):
        if not _readable_by_anyone(path) or path.startswith(("/root/", "/home/", "/tmp/")):
            return f"DynamicUser with ProtectHome and PrivateTmp cannot read {path}"
    return None


STAND_INS = ("sysinit", "basic", "shutdown", "network", "sockets")  # DefaultDependencies


class RealSystemd:
    """systemd as PID 1 of new namespaces, serving sockherd.service with `drop_in` added."""

    def __init__(
        self,
        tmp_path: Any,
        drop_in: str,
        socket_activation: bool = False,
        as_shipped: bool = False,
    ) -> None:
        self.units = tmp_path / "units"
        (self.units / "sockherd.service.d").mkdir(parents=True)
        self.log_path = tmp_path / "service.log"
        self.log_path.touch()
        with open(os.path.join(PROJECT_ROOT, "docker/systemd/sockherd.service")) as shipped:
            unit = shipped.read()
        if as_shipped:  # every line as shipped, DynamicUser and ProtectHome=yes included
            unit = unit.replace("/opt/sockherd/bin/sockherd", f"{SYSTEM_PYTHON} -m sockherd")
            environment = f"PYTHONPATH={PROJECT_ROOT}:{TESTS}:{SITE_PACKAGES}\n"
        else:  # the venv's interpreter lives under /root: no DynamicUser, /root readable
            unit = unit.replace("/opt/sockherd/bin/", os.path.dirname(sys.executable) + "/")
            private_tmp = "no" if PROJECT_ROOT.startswith("/tmp/") else "yes"  # see the tests
            environment = (
                f"PYTHONPATH={TESTS}\nDynamicUser=no\nProtectHome=read-only\n"
                f"PrivateTmp={private_tmp}\n"
            )
        unit = unit.replace(
            "sockherd.examples.hello_http:HelloHandler", "prefork_handlers:Commands"
        )
        (self.units / "sockherd.service").write_text(unit)
        (self.units / "sockherd.service.d/test.conf").write_text(
            f"[Service]\nEnvironment={environment}"
            f"Environment=SOCKHERD_WORKERS=2\nStandardError=file:{self.log_path}\n"
            + textwrap.dedent(drop_in)
        )
        for name in STAND_INS:
            (self.units / f"{name}.target").write_text(f"[Unit]\nDescription={name} stand-in\n")
        wanted = "sockherd.service"
        if socket_activation:
            wanted = "sockherd.socket"
            shutil.copy(os.path.join(PROJECT_ROOT, "docker/systemd/sockherd.socket"), self.units)
            shutil.copy(
                os.path.join(PROJECT_ROOT, "docker/systemd/drop-ins/socket-activation.conf"),
                self.units / "sockherd.service.d",
            )
        (self.units / "test.target").write_text(f"[Unit]\nWants={wanted}\n")
        self.cgroup = f"sockherd-test-{uuid.uuid4().hex[:8]}"
        inner = tmp_path / "pid1.sh"
        inner.write_text(
            "mount --make-rprivate / && mount -t tmpfs tmpfs /run && mkdir /run/lock\n"
            f"export container=sockherd-test SYSTEMD_UNIT_PATH={self.units}\n"
            f"exec {SYSTEMD} --system --unit=test.target --show-status=0 --log-level=warning\n"
        )
        enter = "".join(
            f"mkdir -p {path}/{self.cgroup} && echo $$ > {path}/{self.cgroup}/cgroup.procs && "
            for path in CGROUPS
        )
        self.process = subprocess.Popen(
            ["sh", "-c", enter + "exec unshare --pid --fork --kill-child=SIGKILL --mount --uts "
             f"--ipc --net --cgroup --mount-proc sh {inner}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.pid = wait_until(self._pid1, timeout=20)

    def _pid1(self) -> int | None:
        assert self.process.poll() is None, "unshare exited"
        for child in psutil.Process(self.process.pid).children():
            if child.name() == "systemd":
                return child.pid
        return None

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `command` inside every namespace of the systemd instance."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", *command],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert not check or done.returncode == 0, done
        return done

    def show(
        self, *properties: str, check: bool = True, unit: str = "sockherd.service"
    ) -> dict[str, str]:
        """Properties of `unit` ({} while systemd's bus is not up, unchecked)."""
        names = [f"-p{name}" for name in properties]
        reply = self.run("systemctl", "show", unit, *names, check=check).stdout
        return dict(line.split("=", 1) for line in reply.splitlines() if "=" in line)

    def wait_active(self, timeout: float = 30.0) -> dict[str, str]:
        def active() -> dict[str, str] | None:
            state = self.show("ActiveState", "MainPID", "StatusText", "NRestarts", check=False)
            return state if state.get("ActiveState") == "active" else None

        return dict(wait_until(active, timeout=timeout, interval=0.05))

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)  # PID 1 of its namespace: everything in it dies
        except ProcessLookupError:
            pass
        self.process.wait(30)
        for path in CGROUPS:
            for root, _dirs, _files in sorted(os.walk(f"{path}/{self.cgroup}"), reverse=True):
                wait_until(lambda root=root: _rmdir(root), timeout=10)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies (PR_SET_PDEATHSIG), so
    unshare dies and, with --kill-child, so does the namespace's systemd: a test killed on
    its timeout leaves no systemd behind."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # its last process is still on its way out
    return True


def client(systemd: RealSystemd, line: str) -> subprocess.Popen[str]:
    """A client in systemd's network namespace: sends `line`, prints the reply and its time."""
    script = (
        "import socket, time\n"
        "c = socket.create_connection(('127.0.0.1', 8000), timeout=30)\n"
        f"c.sendall({line.encode()!r} + b'\\n'); began = time.monotonic()\n"
        "reply = c.makefile('rb').readline()\n"
        "print(repr(reply), round(time.monotonic() - began, 2), flush=True)\n"
    )
    return subprocess.Popen(
        ["nsenter", "-t", str(systemd.pid), "-n", sys.executable, "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_active_once_the_workers_are_ready_and_reload_keeps_the_main_pid(tmp_path):
    systemd = RealSystemd(tmp_path, "")
    try:
        first = systemd.wait_active()
        assert "2 workers ready" in systemd.log  # Type=notify: active only after READY=1
        assert first["StatusText"].startswith("running: 2 workers (2 idle, 0 busy)"), first
        systemd.run("systemctl", "reload", "sockherd")
        wait_until(lambda: "reload done: generation 1 serves" in systemd.log, timeout=30)
        after = systemd.wait_active()
        assert after["MainPID"] == first["MainPID"] and after["NRestarts"] == "0"
        assert after["StatusText"].startswith("running: 2 workers"), after
    finally:
        systemd.close()


def test_stop_lets_a_request_outlive_timeout_stop_sec_thanks_to_extend_timeout(tmp_path):
    systemd = RealSystemd(tmp_path, "TimeoutStopSec=1\n")
    try:
        systemd.wait_active()
        held = client(systemd, "sleep 4 late")
        wait_until(lambda: "1 busy" in systemd.show("StatusText")["StatusText"], timeout=20)
        began = time.monotonic()
        systemd.run("systemctl", "stop", "sockherd")
        took = time.monotonic() - began
        reply, _ = held.communicate(timeout=30)
        print(
            f"\nstop with a 4 s request and TimeoutStopSec=1: {took:.2f} s, reply {reply.strip()}"
        )
        assert "late" in reply  # answered: EXTEND_TIMEOUT_USEC held systemd's SIGKILL back
        state = systemd.show("Result", "ExecMainStatus", "ActiveState")
        assert state == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}
        assert took > 1.5  # well past TimeoutStopSec
    finally:
        systemd.close()


def test_a_stopped_supervisor_misses_its_pings_and_systemd_restarts_it(tmp_path):
    systemd = RealSystemd(tmp_path, "WatchdogSec=2\nTimeoutAbortSec=2\nTimeoutStopSec=2\n")
    try:
        first = systemd.wait_active()
        systemd.run("kill", "-STOP", first["MainPID"])
        began = time.monotonic()
        wait_until(lambda: systemd.show("NRestarts")["NRestarts"] == "1", timeout=40)
        restarted = systemd.wait_active()
        took = time.monotonic() - began
        print(f"\nSIGSTOPped supervisor restarted by the watchdog after {took:.1f} s")
        assert restarted["MainPID"] != first["MainPID"]
        assert "2 workers ready" in systemd.log.split("listening on")[-1]
        # the new one pings: it is still the same process three watchdog periods later
        window = time.monotonic() + 6
        while time.monotonic() < window:
            assert systemd.show("MainPID", "NRestarts") == {
                "MainPID": restarted["MainPID"],
                "NRestarts": "1",
            }
    finally:
        systemd.close()


def test_socket_activation_starts_the_service_and_keeps_connections_across_a_restart(tmp_path):
    systemd = RealSystemd(tmp_path, "", socket_activation=True)
    try:
        wait_until(
            lambda: (
                systemd.show("ActiveState", unit="sockherd.socket", check=False).get("ActiveState")
                == "active"
            ),
            timeout=30,
            interval=0.05,
        )
        assert systemd.show("ActiveState")["ActiveState"] == "inactive"  # not started yet
        first = client(systemd, "echo first")  # systemd holds it in the backlog, starts sockherd
        reply, _ = first.communicate(timeout=30)
        assert "first" in reply, reply
        started = systemd.wait_active()
        assert "listening on tcp://127.0.0.1:8000" in systemd.log
        # a restart while a request holds the old process in its drain: the socket stays
        # bound, so clients arriving meanwhile wait in its backlog and are answered
        held = client(systemd, "sleep 3 held")
        wait_until(lambda: "1 busy" in systemd.show("StatusText")["StatusText"], timeout=20)
        restart = subprocess.Popen(
            ["nsenter", "-t", str(systemd.pid), "-a", "systemctl", "restart", "sockherd.service"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: systemd.show("ActiveState")["ActiveState"] == "deactivating", 20)
        during = [client(systemd, f"echo during{n}") for n in range(5)]
        assert restart.wait(60) == 0
        replies = [each.communicate(timeout=30)[0] for each in (held, *during)]
        assert "held" in replies[0], replies
        assert all(f"during{n}" in reply for n, reply in enumerate(replies[1:])), replies
        assert systemd.wait_active()["MainPID"] != started["MainPID"]
    finally:
        systemd.close()


@pytest.mark.skipif(_why_not_as_shipped() is not None, reason=str(_why_not_as_shipped()))
def test_the_unit_as_shipped_runs_under_its_dynamic_user_and_hardening(tmp_path):
    systemd = RealSystemd(tmp_path, "", as_shipped=True)
    try:
        state = systemd.wait_active()
        assert state["StatusText"].startswith("running: 2 workers (2 idle, 0 busy)"), state
        first = client(systemd, "echo shipped")
        assert "shipped" in first.communicate(timeout=30)[0]
        user = systemd.run("ps", "-o", "user=", "-p", state["MainPID"]).stdout.strip()
        assert user not in ("root", "0"), user  # a transient uid
        status = systemd.run(
            "env", f"PYTHONPATH={PROJECT_ROOT}:{SITE_PACKAGES}", SYSTEM_PYTHON, "-m", "sockherd",
            "ctl", "--control", "/run/sockherd/control.sock", "status",
        ).stdout  # fmt: skip
        assert "2 workers (2 wanted)" in status, status
        systemd.run("systemctl", "stop", "sockherd")
        assert systemd.show("Result", "ExecMainStatus") == {
            "Result": "success",
            "ExecMainStatus": "0",
        }
    finally:
        systemd.close()
