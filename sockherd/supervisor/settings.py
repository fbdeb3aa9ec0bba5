"""Every setting of `sockherd serve`, declared once.

One `Setting` row says everything about a setting: its name, how its text is
parsed and checked (`parse`, a `Parser`), its default, its allowed values, one
line of help, and the four ways to give it, all derived from the name unless
overridden: the flag `--worker-timeout`, the variable `SOCKHERD_WORKER_TIMEOUT`,
the TOML key `worker_timeout`, and the class attribute it sets (`attribute`:
`PreforkMixIn.worker_timeout`, `TCPServer.read_timeout`, or None for a setting
only the command uses, such as --bind).  `scope` says where it acts:

* "command": the command itself (addresses, mode, logging);
* "server": every mode (read timeout, metrics, control socket, graceful stop);
* "prefork": the prefork pool only; in other modes the command ignores it, with a warning.

Everything else derives from `TABLE`: the flags and help (`cli`), the variable and
TOML readers (`config`), the Prefork*Server keywords (`launch.prefork_settings`), the
README's tables (`settings_docs`, checked by tests/test_settings_table.py) and, through
`validate_setting()`, checks on values given in Python.  Old spellings stay accepted
(`deprecated_names`) with a warning.  The parsers are in `setting_parsers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from .setting_parsers import (
    COUNT,
    COUNT_OR_ZERO,
    FILE,
    PATH,
    SECONDS,
    SWITCH,
    TEXT,
    Parser,
    Size,
    Switch,
    Value,
    Word,
)

Scope: TypeAlias = Literal["command", "server", "prefork"]
SCOPES: tuple[Scope, ...] = ("command", "server", "prefork")


def flag_of(name: str) -> str:
    """The command-line flag of a setting name: worker_timeout -> --worker-timeout."""
    return "--" + name.replace("_", "-")


def env_of(name: str) -> str:
    """The environment variable of a setting name: worker_timeout -> SOCKHERD_WORKER_TIMEOUT."""
    return "SOCKHERD_" + name.upper()


# --- the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting of `sockherd serve` and of the server classes (see the module)."""

    name: str
    parse: Parser
    default: Value
    help: str
    scope: Scope = "command"
    attribute: str | None = None
    choices: tuple[str, ...] | None = None
    repeatable: bool = False  # the value is a tuple: repeated flags, a,b,c text, a TOML list
    nullable: bool = False  # None is a valid value in Python, though the default is not None
    flag: str = ""  # "" means flag_of(name)
    deprecated_names: tuple[str, ...] = ()
    shown_default: str = ""  # how the docs show the default, where the value would mislead

    def __post_init__(self) -> None:
        if not self.flag:
            object.__setattr__(self, "flag", flag_of(self.name))

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return env_of(self.name)

    @property
    def toml_key(self) -> str:
        """The top-level key that sets it in a --config TOML file."""
        return self.name

    @property
    def switch(self) -> bool:
        """Whether its flag takes no value (--autoscale)."""
        return isinstance(self.parse, Switch) and not self.parse.auto

    @property
    def metavar(self) -> str:
        """What the help writes for its value: N, S, PATH, accept|dispatch, …"""
        return "|".join(self.choices) if self.choices else self.parse.metavar

    def default_text(self) -> str:
        """The default as the docs write it."""
        if self.shown_default:
            return self.shown_default
        if self.default is None:
            return "none"
        if isinstance(self.default, tuple):
            return ", ".join(self.default)
        return self.parse.show(self.default)

    def validate(self, value: object) -> Value:
        """`value` (given in Python) checked by the parser's rules; ValueError with a reason."""
        if value is None:
            if self.default is None or self.nullable:
                return None
            raise ValueError("must not be None")
        if self.repeatable:
            if not isinstance(value, list | tuple) or not value:
                raise ValueError("must be a non-empty list of strings")
            return tuple(str(self._validate_one(item)) for item in value)
        return self._validate_one(value)

    def _validate_one(self, value: object) -> Value:
        checked = self.parse.check(value)
        if self.choices and checked not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        return checked


def _prefork(
    name: str,
    parse: Parser,
    default: Value,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    nullable: bool = False,
    deprecated_names: tuple[str, ...] = (),
    shown_default: str = "",
) -> Setting:
    """A prefork pool setting: it sets the PreforkMixIn attribute of the same name."""
    return Setting(
        name, parse, default, help, scope="prefork", attribute=name, choices=choices,
        nullable=nullable, deprecated_names=deprecated_names, shown_default=shown_default,
    )  # fmt: skip


# fmt: off
TABLE: dict[str, Setting] = {setting.name: setting for setting in (
    Setting(
        "bind", Parser(metavar="ADDRESS"), ("127.0.0.1:8000",),
        "where to listen: tcp://HOST:PORT, udp://…, unix:/path, fd://N or systemd; repeatable",
        repeatable=True,
    ),
    Setting(
        "mode", Word(metavar="MODE", aliases=(("threading", "thread"), ("forking", "fork"))),
        "fork", "how requests are served (threading and forking are accepted too)",
        choices=("sync", "thread", "fork", "prefork"),
    ),
    Setting("udp", SWITCH, False, "plain HOST:PORT and unix: addresses are datagram sockets"),
    Setting(
        "log_level", Word(lower=True), "info", "the least severe log lines shown",
        choices=("debug", "info", "warning", "error"),
    ),
    Setting(
        "read_timeout", SECONDS, None,
        "seconds a client gets to send each request before it is cut off (stream servers)",
        scope="server", attribute="read_timeout",
    ),
    Setting(
        "metrics", Parser(metavar="HOST:PORT"), None,
        "serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9100", scope="server",
    ),
    Setting(
        "metrics_auth_file", FILE, None,
        "a file holding USER:PASSWORD that metrics scrapes must present", scope="server",
    ),
    Setting(
        "metrics_tls_cert", Parser(metavar="PEM"), None,
        "PEM certificate: serve the metrics over HTTPS",
        scope="server", attribute="metrics_tls_certfile",
    ),
    Setting(
        "metrics_tls_key", Parser(metavar="PEM"), None, "PEM private key of --metrics-tls-cert",
        scope="server", attribute="metrics_tls_keyfile",
    ),
    _prefork(
        "workers", COUNT, None, "worker processes",
        shown_default="one per usable CPU (cgroup quota, affinity, count)",
    ),
    _prefork(
        "handoff", TEXT, "accept",
        "accept: idle workers accept; dispatch: the supervisor accepts and passes connections",
        choices=("accept", "dispatch"),
    ),
    _prefork(
        "threads", COUNT, 1,
        "requests each worker serves at once, in a pool of threads (1: no threads)",
    ),
    _prefork(
        "worker_connections", COUNT, 1000,
        "threads > 1: connections a worker holds at once, kept-alive ones included",
    ),
    _prefork("max_requests", COUNT_OR_ZERO, 0, "recycle a worker after N requests (0: never)"),
    _prefork(
        "max_requests_jitter", COUNT_OR_ZERO, 0,
        "add a random 0..N to max_requests, so workers do not recycle together",
    ),
    _prefork(
        "max_worker_memory", Size(), None,
        "recycle a worker whose resident memory exceeds this after a request (K, M, G)",
    ),
    _prefork(
        "worker_timeout", SECONDS, 30.0,
        "seconds a request (or a worker's boot) may run before its worker is aborted",
        nullable=True, deprecated_names=("timeout",),
    ),
    _prefork("kill_grace", SECONDS, 2.0, "seconds from a timed-out worker's SIGABRT to SIGKILL"),
    _prefork(
        "slow_request_timeout", SECONDS, None,
        "log the Python traceback of a request running this long (once; it keeps running)",
        nullable=True,
    ),
    _prefork("slow_log", FILE, None, "write slow-request tracebacks here instead of the log"),
    Setting("graceful_timeout", SECONDS, 30.0, "seconds a stopping server lets requests in "
            "progress finish", scope="server", attribute="graceful_timeout"),
    Setting("upgrade_timeout", SECONDS, 60.0, "seconds an in-place upgrade's new workers get to "
            "be ready before the old ones serve on", scope="server"),
    _prefork(
        "min_workers", COUNT_OR_ZERO, 1,
        "never scale below this; 0 with --autoscale and --idle-timeout: scale to zero",
    ),
    _prefork("max_workers", COUNT, None, "never scale above this", shown_default="4 × usable CPUs"),
    _prefork(
        "heartbeat_interval", SECONDS, 0.5,
        "how often an idle worker wakes to beat and check for a stop request",
    ),
    _prefork(
        "reap_orphans", Switch(metavar="auto|true|false", auto=True), None,
        "reap processes handlers fork and abandon (auto: in a dedicated supervisor process)",
        shown_default="auto",
    ),
    Setting(
        "freeze_heap", SWITCH, True,
        "gc.freeze() the heap before forking workers and request children; --no-freeze-heap: off",
        scope="server", attribute="freeze_heap",
    ),
    Setting(
        "control", PATH, None, "path of a Unix control socket (mode 0600) for sockherd ctl",
        scope="server", attribute="control_socket",
    ),
    _prefork("autoscale", SWITCH, False, "scale between min_workers and max_workers on load"),
    _prefork("min_spare_workers", COUNT_OR_ZERO, 1, "autoscale: add workers when fewer are idle"),
    _prefork(
        "max_spare_workers", COUNT_OR_ZERO, 4,
        "autoscale: remove one when more stay idle for a cool-down",
    ),
    _prefork("autoscale_interval", SECONDS, 1.0, "autoscale: seconds between scale-up steps"),
    _prefork(
        "autoscale_cooldown", SECONDS, 10.0,
        "autoscale: seconds of surplus before each scale-down step",
    ),
    _prefork(
        "idle_timeout", SECONDS, None,
        "autoscale: seconds without a request before the pool drops to min_workers",
    ),
    _prefork("max_spawn_rate", COUNT, 32, "autoscale: workers started per second at most"),
    _prefork(
        "max_pool_memory", Size(minimum=0), None,
        "autoscale: the workers' total PSS not to grow past; 0: no budget (K, M, G)",
        shown_default="80% of the cgroup memory limit, if any",
    ),
    Setting(
        "refork_after", COUNT, None,
        "requests a worker serves before it becomes the template of the next generation "
        "(repeatable: one refork at each; Linux)", scope="prefork", attribute="refork_after",
        repeatable=True,
    ),
)}
# fmt: on

ATTRIBUTES: dict[str, Setting] = {s.attribute: s for s in TABLE.values() if s.attribute}
"""The settings that set a class attribute, by attribute name."""

# The Arbiter's settings (every mode) that PreforkMixIn carries too, for a program's own server.
PREFORK_ALSO = ("graceful_timeout", "control_socket", "freeze_heap")

PREFORK_ATTRIBUTES: tuple[str, ...] = tuple(
    attribute
    for attribute, s in ATTRIBUTES.items()
    if s.scope == "prefork" or attribute in PREFORK_ALSO
)
"""The PreforkMixIn attributes the table declares (also its keyword arguments)."""


def lookup(name: str) -> Setting:
    """The setting called `name`, or the one setting the class attribute `name`.

    KeyError if there is none.
    """
    found = TABLE.get(name) or ATTRIBUTES.get(name)
    if found is None:
        raise KeyError(f"no setting or attribute called {name!r}")
    return found


def validate_setting(name: str, value: object) -> Value:
    """`value` for the setting or attribute `name`, checked by the command's rules.

    For class attributes and keyword arguments given in Python: types are checked
    (an int for a count, a number for seconds, a bool for a switch), so are ranges
    and choices; None is allowed where the attribute allows it.  Returns the value
    (an int of seconds as a float); raises ValueError such as
    "workers must be at least 1, not 0", or KeyError for an unknown name.
    """
    setting = lookup(name)
    try:
        return setting.validate(value)
    except ValueError as error:
        raise ValueError(f"{name} {error}, not {value!r}") from None
