"""The one settings table (`sockherd.supervisor.settings`) and everything derived from it:
the README's tables, the class attributes' defaults, the command's flags, the prefork
keywords, and the rules a value given in Python must obey."""

from __future__ import annotations

import argparse
import ast
import inspect
import os

import pytest

import sockherd
from sockherd.cli import _build_parser
from sockherd.launch import PREFORK_ONLY, prefork_settings
from sockherd.supervisor import settings as settings_module
from sockherd.supervisor.settings import (
    ATTRIBUTES,
    PREFORK_ALSO,
    PREFORK_ATTRIBUTES,
    TABLE,
    flag_of,
    validate_setting,
)
from sockherd.supervisor.settings_docs import update_readme

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(PROJECT_ROOT, "README.md")
# Keyword settings of PreforkMixIn that the command sets in another form (a credentials file).
NOT_IN_THE_TABLE = {"metrics_basic_auth"}


def test_the_readme_tables_are_what_the_table_generates():
    with open(README, encoding="utf-8") as file:
        text = file.read()
    assert update_readme(text) == text, (
        "README.md's settings tables are out of date: run "
        "python -m sockherd.supervisor.settings_docs README.md"
    )


@pytest.mark.parametrize("name", PREFORK_ATTRIBUTES)
def test_every_prefork_attribute_exists_with_the_tables_default(name):
    assert hasattr(sockherd.PreforkMixIn, name)
    assert getattr(sockherd.PreforkMixIn, name) == ATTRIBUTES[name].default


@pytest.mark.parametrize(
    "name",
    [a for a, s in ATTRIBUTES.items() if s.scope == "server" and a not in PREFORK_ALSO],
)
def test_every_server_attribute_has_the_tables_default(name):
    # read_timeout is TCPServer's; the metrics settings are read with getattr(..., None)
    assert getattr(sockherd.TCPServer, name, None) == ATTRIBUTES[name].default


def test_read_timeout_defaults_to_tcpservers_own():
    assert TABLE["read_timeout"].default == sockherd.TCPServer.read_timeout


def test_every_public_prefork_mixin_setting_has_a_row():
    public = {
        name
        for name, value in inspect.getmembers(sockherd.PreforkMixIn)
        if not name.startswith("_") and not callable(value)
    }
    assert public - set(ATTRIBUTES) - NOT_IN_THE_TABLE == set()


def serve_parser() -> argparse.ArgumentParser:
    parser = _build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["serve"]


def test_the_serve_command_has_one_flag_per_setting_and_the_old_spellings():
    flags = {flag for action in serve_parser()._actions for flag in action.option_strings}
    expected = {setting.flag for setting in TABLE.values()}
    expected |= {flag_of(old) for setting in TABLE.values() for old in setting.deprecated_names}
    # a switch that is on by default is turned off with --no-NAME
    expected |= {"--no-" + s.flag[2:] for s in TABLE.values() if s.switch and s.default is True}
    assert flags == expected | {"-h", "--help", "--config"}


def test_the_old_flags_are_hidden_from_the_help():
    shown = serve_parser().format_help()
    assert "--worker-timeout" in shown and "--timeout" not in shown


def test_prefork_only_flags_and_keywords_derive_from_the_scope_and_attribute():
    assert set(PREFORK_ONLY) == {n for n, s in TABLE.items() if s.scope == "prefork"}
    options = {name: setting.default for name, setting in TABLE.items()}
    options.update(control="/tmp/c.sock", worker_timeout=5.0, workers=2)
    keywords = prefork_settings(options)
    assert "control_socket" not in keywords and "control" not in keywords  # the Arbiter's
    assert keywords["worker_timeout"] == 5.0 and keywords["workers"] == 2
    assert set(keywords) <= set(PREFORK_ATTRIBUTES)


def test_names_flags_variables_and_old_spellings_do_not_collide():
    spellings = [n for s in TABLE.values() for n in (s.name, *s.deprecated_names)]
    assert len(spellings) == len(set(spellings))
    assert len({s.flag for s in TABLE.values()}) == len(TABLE)
    for attribute, setting in ATTRIBUTES.items():  # lookup by either name is unambiguous
        assert attribute not in TABLE or TABLE[attribute] is setting


@pytest.mark.parametrize("name", list(TABLE))
def test_every_default_obeys_its_own_rules(name):
    setting = TABLE[name]
    assert setting.validate(setting.default) == setting.default


def test_validate_setting_checks_types_ranges_and_choices_of_python_values():
    assert validate_setting("workers", 4) == 4
    assert validate_setting("worker_timeout", 5) == 5.0
    assert validate_setting("worker_timeout", None) is None  # no deadline
    assert validate_setting("control_socket", "/run/c.sock") == "/run/c.sock"
    assert validate_setting("reap_orphans", None) is None
    assert validate_setting("max_worker_memory", 1 << 30) == 1 << 30
    for name, value, reason in [
        ("workers", 0, "workers must be at least 1, not 0"),
        ("workers", 2.5, "workers must be a whole number, not 2.5"),
        ("workers", True, "workers must be a whole number, not True"),
        ("worker_timeout", -1, "worker_timeout must be more than 0, not -1"),
        ("heartbeat_interval", "1", "heartbeat_interval must be a number, not '1'"),
        ("handoff", "random", "handoff must be one of accept, dispatch, not 'random'"),
        ("autoscale", 1, "autoscale must be True or False, not 1"),
        ("kill_grace", None, "kill_grace must not be None, not None"),
        ("max_requests", -1, "max_requests must be 0 or more, not -1"),
    ]:
        with pytest.raises(ValueError) as raised:
            validate_setting(name, value)
        assert str(raised.value) == reason
    with pytest.raises(KeyError, match="no setting or attribute called 'wrkers'"):
        validate_setting("wrkers", 1)


def test_the_settings_module_imports_nothing_from_sockherd_but_its_parsers():
    tree = ast.parse(inspect.getsource(settings_module))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            assert node.module == "setting_parsers"
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("sockherd")
        elif isinstance(node, ast.Import):
            assert not any(alias.name.startswith("sockherd") for alias in node.names)
