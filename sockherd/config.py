"""Settings of `sockherd serve` from flags, environment variables and a TOML file.

Precedence: a command-line flag beats an environment variable (`SOCKHERD_<NAME>`,
e.g. SOCKHERD_WORKERS=4), which beats the TOML file given with `--config` (top-level
keys named like the options, e.g. `workers = 4`, `graceful_timeout = 10`), which
beats the default.  `bind` may be given several times, as a comma-separated
variable or as a TOML list.  Every value is checked where it enters; a bad one
raises `ConfigError` naming its source, the option and what would be valid.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(Exception):
    """A setting is missing, unreadable or invalid; the message says where and why."""


@dataclass(frozen=True)
class Option:
    """One setting: its name, how to parse a string, its default and allowed values.

    A `repeatable` option's value is a tuple: several flags, a comma-separated
    environment variable, or a TOML string or list of strings.
    """

    name: str
    parse: Callable[[str], Any]
    default: Any
    choices: tuple[str, ...] | None = None
    repeatable: bool = False

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return "SOCKHERD_" + self.name.upper()

    @property
    def flag(self) -> str:
        """The command-line flag that sets it."""
        return "--" + self.name.replace("_", "-")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be more than 0")
    return value


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


MODE_ALIASES = {"threading": "thread", "forking": "fork"}  # the socketserver spellings


def _mode(text: str) -> str:
    return MODE_ALIASES.get(text, text)


def _lower(text: str) -> str:
    return text.strip().lower()


OPTIONS = {
    option.name: option
    for option in (
        Option("bind", str, ("127.0.0.1:8000",), repeatable=True),
        Option("mode", _mode, "fork", ("sync", "thread", "fork", "prefork")),
        Option("udp", _flag, False),
        Option("workers", _positive_int, None),
        Option("min_workers", _positive_int, None),
        Option("max_workers", _positive_int, None),
        Option("autoscale", _flag, False),
        Option("handoff", str, "accept", ("accept", "dispatch")),
        Option("max_requests", _non_negative_int, 0),
        Option("timeout", _positive_float, None),
        Option("read_timeout", _positive_float, None),
        Option("graceful_timeout", _positive_float, 30.0),
        Option("control", str, None),
        Option("metrics", str, None),
        Option("metrics_auth_file", str, None),
        Option("metrics_tls_cert", str, None),
        Option("metrics_tls_key", str, None),
        Option("log_level", _lower, "info", ("debug", "info", "warning", "error")),
    )
}


def _check(option: Option, raw: Any, source: str) -> Any:
    if option.repeatable:
        values = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw
        if not isinstance(values, list | tuple) or not values:
            raise ConfigError(f"{option.name} from {source}: {raw!r} must name at least one value")
        raw = values
        return tuple(_check_one(option, item, source) for item in raw)
    return _check_one(option, raw, source)


def _check_one(option: Option, raw: Any, source: str) -> Any:
    if isinstance(raw, list | dict):
        raise ConfigError(f"{option.name} from {source}: {raw!r} must be a single value")
    try:
        value = option.parse(raw) if isinstance(raw, str) else option.parse(str(raw))
    except ValueError as error:
        raise ConfigError(f"{option.name} from {source}: {raw!r} is not valid ({error})")
    if option.choices and value not in option.choices:
        raise ConfigError(
            f"{option.name} from {source}: {value!r} is not one of {', '.join(option.choices)}"
        )
    return value


def read_file(path: str) -> dict[str, Any]:
    """The settings in a TOML file, checked; ConfigError if unreadable, invalid or unknown."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}")
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}")
    unknown = sorted(set(data) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(OPTIONS)}"
        )
    return {
        name: _check(OPTIONS[name], value, f"config file {path}") for name, value in data.items()
    }


def resolve(
    flags: Mapping[str, Any], environ: Mapping[str, str], config_path: str | None
) -> dict[str, Any]:
    """Every option's value: flag > environment > config file > default.

    `flags` holds only the options given on the command line (already parsed).
    """
    from_file = read_file(config_path) if config_path else {}
    settings = {}
    for name, option in OPTIONS.items():
        if flags.get(name) is not None:
            settings[name] = _check(option, flags[name], option.flag)
        elif option.env in environ:
            settings[name] = _check(option, environ[option.env], option.env)
        elif name in from_file:
            settings[name] = from_file[name]
        else:
            settings[name] = option.default
    return settings


def environment() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
