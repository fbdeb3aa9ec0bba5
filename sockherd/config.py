"""Settings of `sockherd serve` from flags, environment variables and a TOML file.

Precedence: a command-line flag beats an environment variable (`SOCKHERD_<NAME>`,
e.g. SOCKHERD_WORKERS=4), which beats the TOML file given with `--config` (top-level
keys named like the options, e.g. `workers = 4`, `graceful_timeout = 10`), which
beats the default.  `bind` may be given several times, as a comma-separated
variable or as a TOML list.  Every value is checked where it enters; a bad one
raises `ConfigError` naming its source, the option and what would be valid.

The settings themselves (names, parsers, defaults, old spellings) are declared once,
in `supervisor.settings`.  An old spelling (`--timeout`, SOCKHERD_TIMEOUT, TOML
`timeout`) still works from its source, and logs one warning naming the new one.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping

from .supervisor.setting_parsers import Value
from .supervisor.settings import TABLE, Setting, env_of, flag_of

log = logging.getLogger("sockherd")

Option = Setting  # the names this module had before the table moved to supervisor.settings
OPTIONS = TABLE


class ConfigError(Exception):
    """A setting is missing, unreadable or invalid; the message says where and why."""


def _check(option: Setting, raw: object, source: str) -> Value:
    if option.repeatable:
        values = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw
        if not isinstance(values, list | tuple) or not values:
            raise ConfigError(f"{option.name} from {source}: {raw!r} must name at least one value")
        return tuple(str(_check_one(option, item, source)) for item in values)
    return _check_one(option, raw, source)


def _check_one(option: Setting, raw: object, source: str) -> Value:
    if isinstance(raw, list | dict):
        raise ConfigError(f"{option.name} from {source}: {raw!r} must be a single value")
    try:
        value = option.parse(raw if isinstance(raw, str) else str(raw))
    except ValueError as error:
        raise ConfigError(f"{option.name} from {source}: {raw!r} is not valid ({error})")
    if option.choices and value not in option.choices:
        raise ConfigError(
            f"{option.name} from {source}: {value!r} is not one of {', '.join(option.choices)}"
        )
    return value


def _pick(
    given: Mapping[str, object], spellings: list[tuple[str, str]], where: str = ""
) -> tuple[str, object] | None:
    """The first of `spellings` (key in `given`, label) that `given` holds, with its value.

    The first spelling is the setting's own; the others are old ones, each of which
    logs a warning when used (and is ignored when the own spelling is there too).
    """
    (key, label), old = spellings[0], spellings[1:]
    found = (label, given[key]) if given.get(key) is not None else None
    for old_key, old_label in old:
        if given.get(old_key) is not None:
            ignored = f" (ignored: {label} is given too)" if found else ""
            log.warning("%s%s is deprecated; use %s%s", where, old_label, label, ignored)
            found = found or (old_label, given[old_key])
    return found


def _flags(option: Setting) -> list[tuple[str, str]]:
    return [(option.name, option.flag)] + [(old, flag_of(old)) for old in option.deprecated_names]


def _variables(option: Setting) -> list[tuple[str, str]]:
    return [(env_of(name), env_of(name)) for name in (option.name, *option.deprecated_names)]


def _keys(option: Setting) -> list[tuple[str, str]]:
    return [(name, name) for name in (option.toml_key, *option.deprecated_names)]


def read_file(path: str) -> dict[str, Value]:
    """The settings in a TOML file, checked; ConfigError if unreadable, invalid or unknown.

    An old spelling of a key works, with a warning.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}")
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}")
    known = {key for option in OPTIONS.values() for key, _ in _keys(option)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(OPTIONS)}"
        )
    source = f"config file {path}"
    settings = {}
    for name, option in OPTIONS.items():
        found = _pick(data, _keys(option), f"{source}: ")
        if found is not None:
            settings[name] = _check(option, found[1], source)
    return settings


def resolve(
    flags: Mapping[str, object], environ: Mapping[str, str], config_path: str | None
) -> dict[str, Value]:
    """Every option's value: flag > environment > config file > default.

    `flags` holds the options given on the command line (unset ones absent or None),
    keyed by name, or by an old name for an old flag (`timeout` for --timeout).
    """
    from_file = read_file(config_path) if config_path else {}
    settings = {}
    for name, option in OPTIONS.items():
        flag = _pick(flags, _flags(option))
        variable = _pick(environ, _variables(option))
        if flag is not None:
            settings[name] = _check(option, flag[1], flag[0])
        elif variable is not None:
            settings[name] = _check(option, variable[1], variable[0])
        elif name in from_file:
            settings[name] = from_file[name]
        else:
            settings[name] = option.default
    return settings


def environment() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
