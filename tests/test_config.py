"""`sockherd serve` settings: flag > SOCKHERD_* variable > --config TOML file > default,
and every bad value named with its source."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest
from conftest import wait_for_line, wait_until

from sockherd.config import OPTIONS, ConfigError, read_file, resolve

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ECHO = "sockherd.examples.echo:EchoHandler"


def config_file(tmp_path, text: str) -> str:
    path = tmp_path / "sockherd.toml"
    path.write_text(text)
    return str(path)


def test_defaults_apply_when_nothing_is_set():
    settings = resolve({}, {}, None)
    assert settings == {name: option.default for name, option in OPTIONS.items()}


def test_a_flag_beats_the_environment_which_beats_the_file(tmp_path):
    path = config_file(tmp_path, 'workers = 3\nmode = "prefork"\nhandoff = "dispatch"\n')
    settings = resolve({"workers": 1}, {"SOCKHERD_WORKERS": "2", "SOCKHERD_MODE": "sync"}, path)
    assert settings["workers"] == 1  # flag
    assert settings["mode"] == "sync"  # environment over file
    assert settings["handoff"] == "dispatch"  # file over default
    assert settings["bind"] == ("127.0.0.1:8000",)  # default


def test_environment_values_are_parsed_and_checked():
    assert (
        resolve({}, {"SOCKHERD_UDP": "yes", "SOCKHERD_GRACEFUL_TIMEOUT": "2.5"}, None)[
            "graceful_timeout"
        ]
        == 2.5
    )
    with pytest.raises(ConfigError, match=r"workers from SOCKHERD_WORKERS: 'many' is not valid"):
        resolve({}, {"SOCKHERD_WORKERS": "many"}, None)
    with pytest.raises(ConfigError, match="workers from SOCKHERD_WORKERS.*must be at least 1"):
        resolve({}, {"SOCKHERD_WORKERS": "0"}, None)
    with pytest.raises(ConfigError, match="mode from SOCKHERD_MODE: 'fast' is not one of"):
        resolve({}, {"SOCKHERD_MODE": "fast"}, None)


def test_bind_repeats_from_flags_environment_and_file(tmp_path):
    assert resolve({"bind": ["tcp://127.0.0.1:1", "unix:/tmp/a"]}, {}, None)["bind"] == (
        "tcp://127.0.0.1:1",
        "unix:/tmp/a",
    )
    env = {"SOCKHERD_BIND": "tcp://127.0.0.1:1, udp://127.0.0.1:2"}
    assert resolve({}, env, None)["bind"] == ("tcp://127.0.0.1:1", "udp://127.0.0.1:2")
    path = config_file(tmp_path, 'bind = ["unix:/tmp/b", "127.0.0.1:3"]\n')
    assert resolve({}, {}, path)["bind"] == ("unix:/tmp/b", "127.0.0.1:3")
    with pytest.raises(ConfigError, match="bind from SOCKHERD_BIND: '' must name at least one"):
        resolve({}, {"SOCKHERD_BIND": ""}, None)
    with pytest.raises(ConfigError, match="workers from config file .* must be a single value"):
        read_file(config_file(tmp_path, "workers = [1, 2]\n"))


def test_the_socketserver_mode_names_are_accepted_as_aliases():
    assert resolve({"mode": "threading"}, {}, None)["mode"] == "thread"
    assert resolve({}, {"SOCKHERD_MODE": "forking"}, None)["mode"] == "fork"
    assert resolve({}, {}, None)["mode"] == "fork"


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nope.toml"):
        read_file(str(tmp_path / "nope.toml"))


def test_invalid_toml_is_reported_with_its_position(tmp_path):
    with pytest.raises(ConfigError, match="is not valid TOML: .*line 1"):
        read_file(config_file(tmp_path, "workers = = 3\n"))


def test_unknown_keys_in_the_file_list_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown option.*wrkers; known: bind, mode"):
        read_file(config_file(tmp_path, "wrkers = 3\n"))


def test_bad_values_in_the_file_name_the_file(tmp_path):
    path = config_file(tmp_path, "graceful_timeout = -1\n")
    with pytest.raises(ConfigError, match=f"graceful_timeout from config file {path}"):
        read_file(path)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--config", "/nonexistent/sockherd.toml"], {}, "cannot read config file"),
        ([], {"SOCKHERD_HANDOFF": "random"}, "handoff from SOCKHERD_HANDOFF"),
        ([], {"SOCKHERD_WORKERS": "-3"}, "workers from SOCKHERD_WORKERS"),
    ],
)
def test_the_command_turns_bad_settings_into_one_line_and_exit_2(args, env, message):
    result = subprocess.run(
        [sys.executable, "-m", "sockherd", "serve", ECHO, *args],
        cwd=PROJECT_ROOT,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_the_command_takes_its_pool_size_from_the_file_and_environment(tmp_path):
    path = config_file(tmp_path, 'mode = "prefork"\nworkers = 3\nbind = "127.0.0.1:0"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "sockherd", "serve", ECHO, "--config", path],
        cwd=PROJECT_ROOT,
        env=dict(os.environ, SOCKHERD_WORKERS="2"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "(prefork, 2 workers)" in wait_for_line(process.stderr, "listening on")
        wait_until(lambda: len(psutil.Process(process.pid).children()) == 2)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        process.communicate(timeout=30)
