"""The `sockherd` command.

    sockherd serve MODULE:HANDLER|MODULE:FACTORY [--bind ADDRESS]... [--mode MODE] [options]
    sockherd ctl --control PATH status [--json] | top | scale N|+N|-N | reload | refork | upgrade
                 | stop

ADDRESS is `tcp://HOST:PORT`, `udp://HOST:PORT`, `unix:/path`, `fd://N` (an
inherited listening socket), `systemd` (socket activation) or plain `HOST:PORT`;
--bind may be repeated, and each address gets its own server under the one
supervisor.  MODE is sync, thread, fork (the default) or prefork; `threading`
and `forking` are accepted too.  Every option can also come from a SOCKHERD_*
variable or a TOML file (`--config`): flag > variable > file > default.

The server runs in the foreground and logs to stderr, one line per event:
"listening on tcp://127.0.0.1:8000 (prefork, 4 workers)", "4 workers ready",
"worker 2 (pid 123) exited on SIGKILL while busy, replacing", "stopped".
SIGTERM or SIGINT stop it cleanly.  A mistake in the input is reported in one
line and exit status 2; a failure while running gives exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from .bind import BindSpecError, parse_binds
from .config import ConfigError, environment, resolve
from .launch import (
    PREFORK_ONLY,
    LaunchError,
    apply_common_settings,
    build_servers,
    configure_logging,
    describe,
    load_target,
    mode_of,
)
from .metrics.endpoint_security import MetricsTLSError
from .preflight import preflight
from .server.socket_servers import BindError
from .supervisor.arbiter import Arbiter
from .supervisor.control import ControlError, send_command, unreachable
from .supervisor.listen_fds import ListenFdsError
from .supervisor.preflight_run import PREFLIGHT_ENVIRONMENT
from .supervisor.settings import TABLE, flag_of
from .upgrade_client import upgrade_client

log = logging.getLogger("sockherd")

USAGE_ERRORS = (
    LaunchError,
    BindSpecError,
    ControlError,
    ListenFdsError,
    ConfigError,
    BindError,
    MetricsTLSError,
)


_GROUPS = {
    "command": "how and where to serve",
    "server": "every server, in every mode",
    "prefork": "the prefork pool (--mode prefork)",
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sockherd", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a socketserver request handler")
    serve.add_argument("target", help="MODULE:HANDLER (a request handler class) or MODULE:FACTORY")
    _add_setting_flags(serve)
    serve.add_argument(
        "--config", metavar="FILE", help="a TOML file of settings (flags and SOCKHERD_* win)"
    )
    ctl = commands.add_parser("ctl", help="talk to a running prefork supervisor")
    ctl.add_argument("--control", required=True, help="the supervisor's control socket path")
    ctl.add_argument("--json", action="store_true", help="print the reply as JSON")
    ctl.add_argument(
        "words", nargs="+", help="status | top | scale N|+N|-N | reload | refork | upgrade | stop"
    )
    return parser


def _add_setting_flags(serve: argparse.ArgumentParser) -> None:
    """One flag per setting of the table, grouped by scope, and each old spelling, hidden.

    Defaults are None here: an unset flag falls back to its SOCKHERD_* variable, then
    --config, then the table's default (see `config.resolve`).  Values stay text until
    `config` parses them, so a bad one is reported with its source like any other.
    """
    groups = {scope: serve.add_argument_group(title) for scope, title in _GROUPS.items()}
    for option in TABLE.values():
        group = groups[option.scope]
        shown = f"{option.help} (default: {option.default_text()}; {option.env})"
        shown = shown.replace("%", "%%")  # argparse formats help with %
        if option.switch and option.default is True:  # on by default: --no-NAME turns it off
            added = group.add_argument(
                option.flag, dest=option.name, action=argparse.BooleanOptionalAction
            )
        elif option.switch:
            added = group.add_argument(
                option.flag, dest=option.name, action="store_const", const=True
            )
        else:
            action = "append" if option.repeatable else "store"
            added = group.add_argument(option.flag, dest=option.name, action=action)
            added.metavar = option.metavar
        added.help = shown
        for old in option.deprecated_names:  # config.resolve warns when one is used
            group.add_argument(flag_of(old), dest=old, help=argparse.SUPPRESS)


def serve(target_path: str, options: dict[str, Any]) -> int:
    """Run the server(s) in the foreground until SIGTERM or SIGINT; return the exit status."""
    target = load_target(target_path)
    mode = options["mode"]
    listeners = parse_binds(options["bind"], options["udp"]) if target.handler else []
    if mode != "prefork" and target.factory is None:
        ignored = [TABLE[name].flag for name in PREFORK_ONLY if _given(name, options)]
        if ignored:
            log.warning("%s only apply to --mode prefork; ignored", ", ".join(ignored))
    servers = build_servers(target, listeners, mode, options)
    arbiter: Arbiter | None = None
    try:
        if target.factory is not None:
            mode = mode_of(servers[0])
            log.info(
                "%s built its own server; --bind, --mode and the pool settings are not used "
                "(--control, --metrics and --read-timeout are)",
                target_path,
            )
        apply_common_settings(servers, options)
        # A factory's prefork server keeps its own graceful_timeout unless one is given.
        own = target.factory is not None and not _given("graceful_timeout", options)
        graceful = None if own else options["graceful_timeout"]
        arbiter = Arbiter(
            servers,
            control_socket=options.get("control"),
            graceful_timeout=graceful,
            install_signals=True,
            upgrade_timeout=options["upgrade_timeout"],
            upgradable=True,
        )
        arbiter.install_signals()
        for server in servers:
            log.info("listening on %s", describe(server, mode))
        if options.get("metrics"):
            scheme = "https" if options.get("metrics_tls_cert") else "http"
            log.info("metrics on %s://%s/metrics", scheme, options["metrics"])
        arbiter.run()
    finally:
        if arbiter is not None:
            # The drain is over: a signal from now on (children still running past the
            # graceful deadline) takes its default action rather than an unread queue.
            arbiter.close()
        for server in servers:
            children = len(getattr(server, "active_children", None) or ())
            if children:
                log.info(
                    "waiting for %d request%s in progress", children, "" if children == 1 else "s"
                )
            server.server_close()
    log.info("stopped")
    return 0


def _given(name: str, options: dict[str, Any]) -> bool:
    value = options.get(name)
    return value not in (None, False, 0) and value != TABLE[name].default


def control_client(path: str, command: str, as_json: bool) -> int:
    """`sockherd ctl`: print the supervisor's reply; 0 if it says ok, 1 otherwise."""
    try:
        reply = send_command(path, command)
    except OSError as error:
        print(unreachable(path, error), file=sys.stderr)
        return 1
    if as_json or not reply.get("ok"):
        print(json.dumps(reply, indent=2))
    elif "workers" in reply:
        print(status_table(reply))
    else:
        details = " ".join(f"{key}={value}" for key, value in reply.items() if key != "ok")
        print(f"ok {details}".rstrip())
    return 0 if reply.get("ok") else 1


def status_table(reply: dict[str, Any]) -> str:
    """The `ctl status` reply as text: (prefork) one row per worker and a summary of the
    pools, then the supervisor's state."""
    lines: list[str] = []
    if reply["workers"] or reply.get("desired"):
        grouped = any("server" in worker for worker in reply["workers"])
        rows = [("SERVER",) * grouped + ("SLOT", "PID", "STATE", "REQUESTS", "AGE")]
        for worker in reply["workers"]:
            rows.append(
                (str(worker.get("server", "")),) * grouped
                + (
                    str(worker["slot"]),
                    str(worker["pid"]),
                    worker["state"],
                    str(worker["requests"]),
                    _age(worker.get("age", 0.0)),
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines += [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            for row in rows
        ]
        restarts = ", ".join(f"{k} {v}" for k, v in sorted(reply.get("restarts", {}).items()) if v)
        lines.append(
            f"{len(reply['workers'])} workers ({reply.get('desired')} wanted), "
            f"generation {reply.get('generation')}, {reply.get('requests_total')} requests, "
            f"restarts: {restarts or 'none'}{_threads_summary(reply['workers'])}"
        )
    lines.append(_state_line(reply))
    return "\n".join(line.rstrip() for line in lines)


def _threads_summary(workers: list[dict[str, Any]]) -> str:
    """ ", threads: 3 busy, 29 idle" when a worker has a thread pool; else nothing."""
    serving = [w for w in workers if w["state"] in ("idle", "busy")]
    if not any(w.get("threads", 1) > 1 for w in serving):
        return ""
    busy = sum(w.get("busy_threads", 0) for w in serving)
    return f", threads: {busy} busy, {sum(w.get('threads', 1) for w in serving) - busy} idle"


def _state_line(reply: dict[str, Any]) -> str:
    """ "supervisor pid 12: draining, 1 request in progress, 8.5 s left to the deadline"."""
    waiting = reply.get("in_progress", 0)
    line = (
        f"supervisor pid {reply.get('pid')}: {reply.get('state')}, "
        f"{waiting} request{'' if waiting == 1 else 's'} in progress"
    )
    left = reply.get("drain_seconds_left")
    if left is not None:
        line += f", {left:.1f} s left to the graceful deadline"
    return line


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sockherd` console script."""
    args = _build_parser().parse_args(argv)
    if args.command == "ctl":
        if args.words[0] == "top":
            return _top(args.control, args.words[1:], args.json)
        if args.words == ["upgrade"]:
            return upgrade_client(args.control, args.json)
        return control_client(args.control, " ".join(args.words), args.json)
    configure_logging(args.log_level if _valid_level(args.log_level) else "info")
    try:
        names = [n for option in TABLE.values() for n in (option.name, *option.deprecated_names)]
        flags = {name: getattr(args, name) for name in names}
        options = resolve(flags, environment(), args.config)
        configure_logging(str(options["log_level"]))
        if os.environ.get(PREFLIGHT_ENVIRONMENT):  # an upgrade loads the new code first
            return preflight(args.target, options)
        return serve(args.target, options)
    except USAGE_ERRORS as error:
        log.error("%s", error)
        return 2
    except OSError as error:
        log.error("%s", error)
        return 1


def _top(path: str, extra: list[str], as_json: bool) -> int:
    """`ctl top`: the live view (sockherd.top); usage errors give exit status 2."""
    if extra or as_json:
        print(
            "sockherd: ctl top takes no arguments (for JSON use: ctl status --json)",
            file=sys.stderr,
        )
        return 2
    from . import top  # here, so that curses is never loaded into a serving process

    return top.run(path)


def _valid_level(level: str | None) -> bool:
    return level is not None and level.lower() in (TABLE["log_level"].choices or ())


if __name__ == "__main__":
    sys.exit(main())
