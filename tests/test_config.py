"""`sockherd serve` settings: flag > SOCKHERD_* variable > --config TOML file > default,
and every bad value named with its source."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys

import psutil
import pytest
from conftest import listening_address, wait_for_line, wait_until

from sockherd.config import OPTIONS, ConfigError, read_file, resolve

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(PROJECT_ROOT, "tests")
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


def test_the_prefork_settings_without_a_flag_before_have_one():
    settings = resolve(
        {"kill_grace": "0.5", "max_requests_jitter": "7"},
        {"SOCKHERD_MAX_WORKER_MEMORY": "256M", "SOCKHERD_REAP_ORPHANS": "auto"},
        None,
    )
    assert settings["kill_grace"] == 0.5 and settings["max_requests_jitter"] == 7
    assert settings["max_worker_memory"] == 256 * 1024 * 1024
    assert settings["reap_orphans"] is None
    assert resolve({"reap_orphans": "no"}, {}, None)["reap_orphans"] is False
    with pytest.raises(ConfigError, match="heartbeat_interval from --heartbeat-interval"):
        resolve({"heartbeat_interval": "0"}, {}, None)


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


def deprecation_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


def test_the_old_timeout_flag_sets_the_worker_timeout_with_one_warning(caplog):
    assert resolve({"timeout": "5"}, {}, None)["worker_timeout"] == 5.0
    assert deprecation_lines(caplog) == ["--timeout is deprecated; use --worker-timeout"]
    assert all(r.levelno == logging.WARNING and r.name == "sockherd" for r in caplog.records)


def test_the_old_timeout_variable_sets_the_worker_timeout_with_one_warning(caplog):
    assert resolve({}, {"SOCKHERD_TIMEOUT": "6"}, None)["worker_timeout"] == 6.0
    assert deprecation_lines(caplog) == [
        "SOCKHERD_TIMEOUT is deprecated; use SOCKHERD_WORKER_TIMEOUT"
    ]


def test_the_old_timeout_key_sets_the_worker_timeout_with_one_warning(tmp_path, caplog):
    path = config_file(tmp_path, "timeout = 7\n")
    assert resolve({}, {}, path)["worker_timeout"] == 7.0
    assert deprecation_lines(caplog) == [
        f"config file {path}: timeout is deprecated; use worker_timeout"
    ]


def test_the_new_spelling_wins_over_the_old_one_in_the_same_source(tmp_path, caplog):
    settings = resolve({"timeout": "1", "worker_timeout": "2"}, {}, None)
    assert settings["worker_timeout"] == 2.0
    assert deprecation_lines(caplog) == [
        "--timeout is deprecated; use --worker-timeout (ignored: --worker-timeout is given too)"
    ]
    path = config_file(tmp_path, "timeout = 3\nworker_timeout = 4\n")
    assert read_file(path) == {"worker_timeout": 4.0}


def test_a_bad_old_spelling_is_reported_under_its_own_name():
    with pytest.raises(ConfigError, match=r"worker_timeout from SOCKHERD_TIMEOUT: '-1' is not"):
        resolve({}, {"SOCKHERD_TIMEOUT": "-1"}, None)


def lines_until(stream, text: str) -> list[str]:
    """Every line of `stream` up to and including the first one containing `text`."""
    lines: list[str] = []
    while not lines or text not in lines[-1]:
        line = stream.readline()
        assert line, f"no line with {text!r}; the process wrote:\n{''.join(lines)}"
        lines.append(line)
    return lines


@pytest.mark.parametrize(
    ("spelling", "new"),
    [("--timeout", "--worker-timeout"), ("SOCKHERD_TIMEOUT", "SOCKHERD_WORKER_TIMEOUT"),
     ("timeout", "worker_timeout")],
)  # fmt: skip
def test_the_command_applies_an_old_timeout_spelling_and_warns_once(tmp_path, spelling, new):
    args, env = ["--bind", "127.0.0.1:0", "--mode", "prefork", "--workers", "1"], {}
    if spelling == "--timeout":
        args += ["--timeout", "0.5"]
    elif spelling == "SOCKHERD_TIMEOUT":
        env["SOCKHERD_TIMEOUT"] = "0.5"
    else:
        args += ["--config", config_file(tmp_path, "timeout = 0.5\n")]
    process = subprocess.Popen(
        [sys.executable, "-m", "sockherd", "serve", "prefork_handlers:Commands", *args],
        cwd=PROJECT_ROOT,
        env=dict(os.environ, PYTHONPATH=TESTS, **env),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        before = lines_until(process.stderr, "listening on")
        warnings = [line for line in before if "deprecated" in line]
        assert len(warnings) == 1 and "WARNING" in warnings[0]
        assert f"{spelling} is deprecated; use {new}" in warnings[0]
        wait_for_line(process.stderr, "1 worker")
        # The value applies: a hung request is cut off after 0.5 s, not the default 30 s.
        with socket.create_connection(listening_address(before[-1]), timeout=30) as client:
            client.sendall(b"hang\n")
            assert "(worker_timeout=0.5)" in wait_for_line(process.stderr, "worker_timeout=")
            assert client.recv(100) == b""  # the worker is gone, and the connection with it
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "deprecated" not in rest


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
