"""`sockherd ctl top`: a live view of a running supervisor, driven in a real terminal (tmux:
send-keys to type, capture-pane to read the screen), and its one-shot form for a pipe."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import tcp_request, wait_until
from serve_command import ENV, ctl, prefork_supervisor, stop

from sockherd.top_view import Line, Reading, busiest_first, frame, plain

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def supervisor(control: str):
    """A real `sockherd serve --mode prefork --workers 2` with a control socket."""
    return prefork_supervisor("--control", control)


def worker_pids(control: str) -> set[int]:
    return {w["pid"] for w in json.loads(ctl(control, "status", "--json").stdout)["workers"]}


class Terminal:
    """A tmux session of its own (its own server socket) running one command."""

    def __init__(self, name: str, command: str, width: int = 150, height: int = 30) -> None:
        binary = shutil.which("tmux")
        if binary is None:
            pytest.skip("tmux is not installed (Debian package 'tmux'; .ci/install-system-deps)")
        self.tmux = [binary, "-L", name, "-f", "/dev/null"]
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-x", str(width), "-y", str(height),
             "-c", PROJECT_ROOT, command],
            check=True, timeout=30, env=ENV,
        )  # fmt: skip

    def screen(self) -> list[str]:
        """The visible lines of the pane."""
        out = subprocess.run(
            [*self.tmux, "capture-pane", "-p"], capture_output=True, text=True, timeout=30
        )
        return out.stdout.splitlines()

    def wait_for(self, condition, timeout: float = 30.0) -> list[str]:
        """Poll the screen until `condition(lines)` holds; fail with the screen if not."""
        last: list[list[str]] = [[]]

        def holds() -> bool:
            last[0] = self.screen()
            return bool(condition(last[0]))

        try:
            wait_until(holds, timeout=timeout, interval=0.1)
        except pytest.fail.Exception:
            raise AssertionError("screen never matched:\n" + "\n".join(last[0])) from None
        return last[0]

    def send(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", *keys], check=True, timeout=30)

    def resize(self, width: int, height: int) -> None:
        subprocess.run(
            [*self.tmux, "resize-window", "-x", str(width), "-y", str(height)],
            check=True,
            timeout=30,
        )

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True, timeout=30)


@contextlib.contextmanager
def top_in_tmux(control: str, tmp_path, **size: int) -> Iterator[tuple[Terminal, str]]:
    """`ctl top` in a tmux pane; yields the terminal and the file its exit status goes to."""
    status_file = str(tmp_path / "top.status")
    command = (
        f"{sys.executable} -m sockherd ctl --control {control} top 2>{tmp_path}/top.err; "
        f"echo $? > {status_file}.tmp; mv {status_file}.tmp {status_file}; sleep 60"
    )
    terminal = Terminal(f"sockherd-top-{os.getpid()}", command, **size)
    try:
        yield terminal, status_file
    finally:
        terminal.close()


def exit_status(status_file: str) -> int:
    wait_until(lambda: os.path.exists(status_file), timeout=30, interval=0.05)
    with open(status_file) as file:
        return int(file.read())


def rows_of(lines: list[str], pids: set[int]) -> list[list[str]]:
    """The table rows on the screen: lines whose second cell is a worker's pid."""
    return [ln.split() for ln in lines if len(ln.split()) > 1 and ln.split()[1] in map(str, pids)]


@pytest.mark.timeout(120)
def test_top_shows_the_workers_refreshes_sorts_the_busy_one_first_and_quits_on_q(tmp_path):
    control = str(tmp_path / "control.sock")
    with supervisor(control) as (_, address), top_in_tmux(control, tmp_path) as (term, status):
        pids = worker_pids(control)
        screen = term.wait_for(lambda lines: len(rows_of(lines, pids)) == 2)
        assert "running" in screen[0] and "workers: 2 of 2 wanted" in screen[1]
        header = next(line for line in screen if line.startswith("SLOT"))
        assert header.split()[:4] == ["SLOT", "PID", "STATE", "REQUESTS"]
        assert any("q quits" in line for line in screen)

        for index in range(5):
            assert tcp_request(address, b"echo %d\n" % index).endswith(b" %d\n" % index)
        # The counters on the screen follow: the two rows' REQUESTS add up to 5.
        term.wait_for(lambda lines: sum(int(r[3]) for r in rows_of(lines, pids)) == 5)

        with socket.create_connection(address, timeout=30) as held:
            held.sendall(b"hold busy\n")  # the worker stays busy until one more line
            screen = term.wait_for(lambda lines: any(r[2] == "busy" for r in rows_of(lines, pids)))
            assert rows_of(screen, pids)[0][2] == "busy", "the busy worker is listed first"
            assert any("1 in progress" in line for line in screen[:3])
            held.sendall(b"done\n")
            assert held.recv(100).endswith(b" busy\n")
        term.wait_for(lambda lines: all(r[2] == "idle" for r in rows_of(lines, pids)))

        term.send("q")
        assert exit_status(status) == 0


@pytest.mark.timeout(120)
def test_top_redraws_at_a_new_terminal_size(tmp_path):
    control = str(tmp_path / "control.sock")
    with supervisor(control) as _, top_in_tmux(control, tmp_path) as (term, status):
        pids = worker_pids(control)
        wide = term.wait_for(lambda lines: len(rows_of(lines, pids)) == 2)
        assert max(len(line) for line in wide) > 60
        term.resize(40, 12)
        narrow = term.wait_for(lambda lines: len(lines) == 12 and len(rows_of(lines, pids)) == 2)
        assert max(len(line) for line in narrow) <= 40
        term.resize(40, 5)  # too short for the table: the rows left out are counted
        term.wait_for(lambda lines: any("more rows" in line for line in lines))
        term.send("q")
        assert exit_status(status) == 0


@pytest.mark.timeout(120)
def test_top_says_so_in_one_line_and_exits_1_when_the_supervisor_goes_away(tmp_path):
    control = str(tmp_path / "control.sock")
    with supervisor(control) as (process, _), top_in_tmux(control, tmp_path) as (term, status):
        pids = worker_pids(control)
        term.wait_for(lambda lines: len(rows_of(lines, pids)) == 2)
        stop(process)
        assert exit_status(status) == 1
        with open(tmp_path / "top.err") as file:
            said = file.read().splitlines()
        assert len(said) == 1 and said[0].startswith(f"sockherd: lost the supervisor at {control}")


@pytest.mark.timeout(180)
@pytest.mark.skipif(
    not (hasattr(os, "memfd_create") and hasattr(os, "pidfd_open")),
    reason="an in-place upgrade needs Linux (memfd, pidfd)",
)
def test_top_keeps_running_through_an_in_place_upgrade(tmp_path):
    """The exec closes the connections the old image had accepted: the view retries
    rather than giving up, and then shows the new generation and the upgrade's outcome."""
    control = str(tmp_path / "control.sock")
    with supervisor(control) as (process, _), top_in_tmux(control, tmp_path) as (term, status):
        term.wait_for(lambda lines: len(rows_of(lines, worker_pids(control))) == 2)
        for number in (1, 2):
            upgraded = ctl(control, "upgrade")
            assert upgraded.returncode == 0, upgraded.stderr
            pids = worker_pids(control)
            screen = term.wait_for(
                lambda lines, n=number, pids=pids: (
                    any(f"generation {n}" in ln for ln in lines)
                    and any(f"last upgrade {n}: ok in" in ln for ln in lines)
                    and len(rows_of(lines, pids)) == 2
                )
            )
            assert f"supervisor pid {process.pid}: running" in screen[0]
        assert not os.path.exists(status), "the view gave up during an upgrade"
        term.send("q")
        assert exit_status(status) == 0


# A control socket that answers `status` like a supervisor with one worker, except while
# the file DROP exists: then it closes each connection without a reply, as an in-place
# upgrade's exec does to the connections the old image had accepted.
DROPPING_SUPERVISOR = """
import json, os, socket, sys
path, drop = sys.argv[1], sys.argv[2]
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen(8)
print("ready", flush=True)
answered = dropped = 0
while True:
    connection, _ = listener.accept()
    connection.recv(1024)
    if os.path.exists(drop):
        dropped += 1
    else:
        answered += 1
        worker = {"slot": 0, "pid": os.getpid(), "state": "idle", "requests": answered, "age": 1}
        reply = {"ok": True, "state": "running", "pid": os.getpid(), "uptime": 1.0,
                 "desired": 1, "generation": 1 if dropped else 0, "workers": [worker],
                 "requests_total": answered, "in_progress": 0, "restarts": {}, "servers": []}
        connection.sendall(json.dumps(reply).encode() + b"\\n")
    connection.close()
"""


@pytest.mark.timeout(120)
def test_top_retries_a_connection_closed_without_a_reply_and_recovers(tmp_path):
    control, drop = str(tmp_path / "control.sock"), str(tmp_path / "drop")
    fake = subprocess.Popen(
        [sys.executable, "-c", DROPPING_SUPERVISOR, control, drop],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert fake.stdout is not None and fake.stdout.readline() == "ready\n"
        with top_in_tmux(control, tmp_path) as (term, status):
            term.wait_for(lambda lines: any("generation 0" in line for line in lines))
            open(drop, "w").close()
            noted = term.wait_for(lambda lines: any("no reply for" in ln for ln in lines))
            assert any("(it closed the connection without a reply); retrying" in ln for ln in noted)
            assert any("generation 0" in line for line in noted), "the last frame stays"
            os.unlink(drop)
            term.wait_for(
                lambda lines: (
                    any("generation 1" in line for line in lines)
                    and not any("no reply" in line for line in lines)
                )
            )
            term.send("q")
            assert exit_status(status) == 0
    finally:
        fake.kill()
        fake.communicate()


def test_top_prints_one_frame_when_stdout_is_not_a_terminal(tmp_path):
    control = str(tmp_path / "control.sock")
    with supervisor(control) as (_, address):
        for index in range(3):
            tcp_request(address, b"echo %d\n" % index)
        status = json.loads(ctl(control, "status", "--json").stdout)
        pids = {worker["pid"] for worker in status["workers"]}
        shown = ctl(control, "top")
    assert shown.returncode == 0 and shown.stderr == ""
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("sockherd top - supervisor pid") and "running" in lines[0]
    assert "requests: 3 served" in lines[2]
    (server,) = status["servers"]
    backlog = server["listen_queue"][1]
    assert backlog > 0 and lines[3] == f"listen queue: {server['server']} 0 of {backlog}"
    rows = rows_of(lines, pids)
    assert {int(row[1]) for row in rows} == pids and sum(int(row[3]) for row in rows) == 3
    assert not any("q quits" in line for line in lines)


def test_top_with_a_bad_control_path_says_so_in_one_line(tmp_path):
    missing = ctl(str(tmp_path / "gone.sock"), "top")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and "cannot reach the supervisor" in missing.stderr
    assert ctl(str(tmp_path / "gone.sock"), "top", "now").returncode == 2


# --- the view as a function of the reply ----------------------------------------------------


def reply(*workers: dict, **fields) -> dict:
    return {"ok": True, "state": "running", "pid": 10, "uptime": 5.0, "in_progress": 0,
            "desired": len(workers), "generation": 0, "workers": list(workers),
            "requests_total": sum(w["requests"] for w in workers), "restarts": {},
            "servers": [{"server": "127.0.0.1:8000", "mode": "prefork"}], **fields}  # fmt: skip


def worker(slot: int, state: str = "idle", requests: int = 0, **live) -> dict:
    return {"slot": slot, "pid": 100 + slot, "state": state, "requests": requests, "age": 3.0,
            **live}  # fmt: skip


def test_busiest_first_puts_busy_workers_and_long_requests_first():
    workers = [
        worker(0, "idle", 50),
        worker(1, "busy", 1, request_elapsed=0.2),
        worker(2, "busy", 9, request_elapsed=4.0),
        worker(3, "idle", 70),
    ]
    order = [w["slot"] for w in busiest_first(workers, {})]
    assert order == [2, 1, 3, 0]
    # Among idle workers, the one that served the most since the last refresh comes first.
    assert [w["slot"] for w in busiest_first(workers, {("", 0, 100): 9.0})][2] == 0


def test_the_live_record_lights_up_its_columns_when_the_reply_carries_it():
    bare = plain(frame(Reading(reply(worker(0), worker(1)), 1.0)))
    assert "ELAPSED" not in bare and "REQUEST\n" not in bare and "RSS" not in bare
    live = reply(
        worker(0, "busy", 3, request_elapsed=2.5, cpu_seconds=1.25, rss=48 << 20, pss=30 << 20,
               request={"description": "GET /big HTTP/1.1", "peer": "127.0.0.1:5555"}),
        worker(1, "idle", 7, request_elapsed=None, cpu_seconds=0.5, rss=40 << 20, pss=25 << 20,
               request=None),
    )  # fmt: skip
    lines = frame(Reading(live, 1.0))
    header = next(line for line in lines if line.style == "header").text.split()
    assert header == ["SLOT", "PID", "STATE", "REQUESTS", "ELAPSED", "CPU", "RSS", "PSS", "AGE",
                      "REQUEST"]  # fmt: skip
    busy = next(line for line in lines if line.style == "busy").text
    assert busy.split()[:9] == ["0", "100", "busy", "3", "2.5s", "1.25s", "48.0M", "30.0M", "3.0s"]
    assert busy.endswith("GET /big HTTP/1.1")
    idle = next(line for line in lines if line.style == "idle").text
    assert idle.split()[4] == "-" and idle.rstrip().endswith("3.0s")


def test_two_replies_give_rates_and_a_draining_supervisor_shows_its_deadline():
    before = Reading(reply(worker(0, requests=10), worker(1, requests=4)), at=100.0)
    after = Reading(
        reply(worker(0, requests=30), worker(1, requests=4), state="draining",
              drain_seconds_left=8.25, in_progress=1),
        at=102.0,
    )  # fmt: skip
    lines = frame(after, before, clock=0.0)
    assert ": draining," in lines[0].text and "8.2 s left to the graceful deadline" in lines[0].text
    assert lines[2].text.startswith("requests: 34 served, 10.0/s, 1 in progress")
    table = [line.text.split() for line in lines if line.style == "idle"]
    assert [(row[0], row[4]) for row in table] == [("0", "10.0"), ("1", "0.0")]


def test_the_last_upgrade_is_shown_in_progress_done_or_failed():
    def shown(upgrade: dict) -> list[str]:
        return [line.text for line in frame(Reading(reply(worker(0), upgrade=upgrade), 1.0))]

    assert "upgrade 4: in progress" in shown({"id": 4, "outcome": None, "reason": None})
    assert "last upgrade 4: ok in 1.2 s" in shown({"id": 4, "outcome": "ok", "seconds": 1.25})
    failed = {"id": 5, "outcome": "failed", "reason": "the new code does not import"}
    assert "last upgrade 5: failed (the new code does not import)" in shown(failed)
    assert not any("upgrade" in text for text in shown(None))


def test_a_supervisor_without_a_pool_says_which_mode_it_serves_in():
    lines = frame(Reading(reply(servers=[{"server": "127.0.0.1:8000", "mode": "thread"}]), 1.0))
    assert lines[-1] == Line("no worker pool: the servers run in thread mode")
