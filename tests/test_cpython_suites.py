"""CPython's own regression suites for socketserver and the stdlib servers built on it pass
with sockherd installed as `socketserver` (each suite in a fresh interpreter)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpython_suite_runner.py")

SUITES = [
    pytest.param("test.test_socketserver", 60),
    pytest.param("test.test_httpservers", 60),
    pytest.param("test.test_docxmlrpc", 60),
    pytest.param("test.test_wsgiref", 60),
    pytest.param("test.test_xmlrpc", 180),
    pytest.param("test.test_logging", 180),
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("suite", "limit"), SUITES)
def test_cpython_suite_passes_with_sockherd_installed(suite, limit):
    if importlib.util.find_spec(suite) is None:
        pytest.skip(f"{suite} is not installed with this interpreter")
    result = subprocess.run(
        [sys.executable, RUNNER, suite],
        capture_output=True,
        text=True,
        timeout=limit,
        stdin=subprocess.DEVNULL,
    )
    summary = [line for line in result.stdout.splitlines() if "sockherd-installed" in line]
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"\n{suite}: {summary[-1] if summary else '?'}")
