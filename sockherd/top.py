"""`sockherd ctl --control PATH top`: a live view of a supervisor, over its control socket.

Theory of operation
-------------------
Once a second the view asks the supervisor for `status` (the same reply as `ctl status
--json`), turns it into lines with `top_view.frame` -- the previous reply gives the rates --
and draws them with curses, the busiest workers first.  Between two replies it waits for a
key: `q` quits (exit status 0), a resize redraws at once at the new size (lines are cut
to the width; rows that do not fit are counted on the last line).

When stdout is not a terminal (a pipe, a file, a script) it prints one frame as plain text
and exits: `sockherd ctl --control PATH top | head` works like `status`, with the live
columns.  A control socket that cannot be reached gives the same one line and exit status 1
as every other `ctl` command; a supervisor that goes away while the view runs (its socket
file removed, or nobody listening on it) gives one line ("lost the supervisor") and exit
status 1, after curses has given the terminal back.  A connection closed without a reply
(an in-place upgrade's exec closes the connections the old image had accepted) or a reply
that times out is retried at each refresh, with a note on screen, for up to 30 s.
"""

from __future__ import annotations

import curses
import sys
import time
from typing import Any

from .supervisor.control import send_command, unreachable
from .top_view import Line, Reading, frame, plain

INTERVAL = 1.0
REPLY_TIMEOUT = 5.0
GIVE_UP = 30.0  # seconds of transient failures before the view gives up


class SupervisorGone(Exception):
    """The supervisor does not answer (or refuses): `line` is what `ctl` prints if it never
    answered, `reason` what went wrong; `transient` if it may answer the next time (a
    connection closed by an in-place upgrade's exec, a reply that timed out)."""

    def __init__(self, line: str, reason: str, transient: bool = False) -> None:
        super().__init__(line)
        self.reason = reason
        self.transient = transient


def fetch(path: str) -> Reading:
    """One `status` reply from the supervisor at `path`, stamped with the monotonic time.

    Raises SupervisorGone (with the line `ctl` prints) if it does not answer, or answers
    with an error (a refused user, say)."""
    try:
        reply = send_command(path, "status", timeout=REPLY_TIMEOUT)
    except TimeoutError as error:
        reason = f"no reply within {REPLY_TIMEOUT:.0f} s"
        raise SupervisorGone(unreachable(path, error), reason, transient=True) from None
    except OSError as error:  # no socket file (it stopped), or nobody listening (killed)
        raise SupervisorGone(unreachable(path, error), str(error.strerror or error)) from None
    except ValueError:  # closed without a whole reply: an upgrade's exec, or stopping
        reason = "it closed the connection without a reply"
        raise SupervisorGone(unreachable(path, OSError(reason)), reason, True) from None
    if not reply.get("ok"):
        said = f"sockherd: the supervisor at {path} said: {reply.get('error')}"
        raise SupervisorGone(said, str(reply.get("error")))
    return Reading(reply, time.monotonic())


def run(path: str, interval: float = INTERVAL) -> int:
    """Show the supervisor at `path` until `q` (live, on a terminal) or once (otherwise).

    Returns the exit status: 0, or 1 with one line on stderr when the supervisor cannot
    be reached or goes away."""
    try:
        first = fetch(path)
    except SupervisorGone as gone:
        print(gone, file=sys.stderr)
        return 1
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        print(plain(frame(first)))
        return 0
    try:
        curses.wrapper(_live, path, first, interval)
    except SupervisorGone as gone:
        print(f"sockherd: lost the supervisor at {path}: {gone.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except curses.error as error:  # a terminal curses cannot drive (TERM unknown, ...)
        print(
            f"sockherd: cannot draw on this terminal ({error}); showing one frame", file=sys.stderr
        )
        print(plain(frame(fetch_or_first(path, first))))
    return 0


def fetch_or_first(path: str, first: Reading) -> Reading:
    """A fresh reply if the supervisor still answers, else the first one."""
    try:
        return fetch(path)
    except SupervisorGone:
        return first


def _live(screen: Any, path: str, current: Reading, interval: float) -> None:
    """The curses loop: draw, wait for a key or the next refresh, fetch, repeat.

    A transient failure keeps the last frame on screen with a note and retries at the next
    refresh, for up to GIVE_UP seconds; any other failure ends the view (SupervisorGone)."""
    styles = _styles()
    _hide_cursor()
    previous: Reading | None = None
    failing_since: float | None = None
    note: Line | None = None
    while True:
        lines = frame(current, previous)
        _draw(screen, lines[:1] + [note] + lines[1:] if note else lines, styles)
        due = time.monotonic() + interval if note else current.at + interval
        while (remaining := due - time.monotonic()) > 0:
            screen.timeout(max(1, int(remaining * 1000)))
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            if key == curses.KEY_RESIZE:
                curses.update_lines_cols()
                lines = frame(current, previous)
                _draw(screen, lines[:1] + [note] + lines[1:] if note else lines, styles)
        try:
            previous, current = current, fetch(path)
        except SupervisorGone as gone:
            now = time.monotonic()
            failing_since = now if failing_since is None else failing_since
            if not gone.transient or now - failing_since > GIVE_UP:
                raise
            note = Line(
                f"no reply for {now - failing_since:.0f} s ({gone.reason}); retrying", "stopping"
            )
        else:
            failing_since, note = None, None


def _hide_cursor() -> None:
    try:
        curses.curs_set(0)
    except curses.error:
        pass  # a terminal without an invisible cursor: it stays visible


def _styles() -> dict[str, int]:
    """Attributes per line style: bold title and header, coloured states where the
    terminal has colours."""
    styles = {"title": curses.A_REVERSE | curses.A_BOLD, "header": curses.A_BOLD}
    if curses.has_colors():
        curses.use_default_colors()
        for number, (style, colour) in enumerate(
            (("busy", curses.COLOR_YELLOW), ("starting", curses.COLOR_CYAN),
             ("stopping", curses.COLOR_RED)),
            start=1,
        ):  # fmt: skip
            curses.init_pair(number, colour, -1)
            styles[style] = curses.color_pair(number)
        styles["busy"] |= curses.A_BOLD
    return styles


def _draw(screen: Any, lines: list[Line], styles: dict[str, int]) -> None:
    rows, columns = screen.getmaxyx()
    footer = Line("q quits; refreshed every second", "summary")
    shown = lines[: max(0, rows - 1)]
    if len(lines) > len(shown):
        hidden = len(lines) - len(shown) + 1
        shown = shown[:-1] + [Line(f"... {hidden} more rows (make the terminal taller)")]
    screen.erase()
    for y, line in enumerate([*shown, footer] if rows > 1 else shown[:1]):
        if y >= rows:
            break
        try:  # the bottom-right cell cannot be written without an error: cut at width - 1
            screen.addnstr(y, 0, line.text, max(0, columns - 1), styles.get(line.style, 0))
        except curses.error:
            pass
    screen.refresh()
