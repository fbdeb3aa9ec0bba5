"""The Grafana dashboard (docker/grafana/) and the alert rules (docker/prometheus/): every
panel's query runs against a real Prometheus scraping a live `sockherd serve` and must return
data; the rules load and evaluate there, and pass promtool's checks and unit tests."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import urllib.error

import pytest
import yaml
from conftest import tcp_request, wait_until
from prometheus_server import CONFIG_DIR, free_port, running_prometheus
from serve_command import ctl, prefork_supervisor

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(PROJECT_ROOT, "docker")
DASHBOARD = os.path.join(DOCKER, "grafana", "dashboards", "sockherd.json")

# Metrics the dashboard and the rules use that are not exported yet: queries on them must
# return NO data (the test fails once they do, to be moved out of here).  Every other panel
# is held to returning data.
PENDING_METRICS: set[str] = set()

# What Grafana substitutes before a query reaches Prometheus ("All" is the regex .*).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*", "$server": ".*"}
METRIC_NAME = re.compile(r"\b((?:sockherd|process|python)_[a-z_]+)\b")


def dashboard() -> dict:
    with open(DASHBOARD) as file:
        return json.load(file)


def panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def as_sent(expression: str) -> str:
    """A panel's expression as Grafana sends it, with the variables at "All"."""
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    assert "$" not in expression, f"a variable the test does not know: {expression}"
    return expression


def queries() -> list[tuple[str, str]]:
    """(panel title and refId, expression as sent) for every target of every panel."""
    return [
        (f"{panel['title']} [{target['refId']}]", as_sent(target["expr"]))
        for panel in panels()
        for target in panel["targets"]
    ]


def metric_names(expression: str) -> set[str]:
    """The metric names an expression reads (label names and functions are not matched:
    they do not start with sockherd_, process_ or python_)."""
    names = set(METRIC_NAME.findall(expression))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if "duration" in n else n for n in names}


def pending(expression: str) -> bool:
    return bool(metric_names(expression) & PENDING_METRICS)


# --- the dashboard's shape and its provisioning ---------------------------------------------


def test_the_dashboard_covers_what_the_issue_asks_for():
    expressions = " ".join(expression for _, expression in queries())
    for needed in (
        "sockherd_requests_total",
        "histogram_quantile(0.99, sum by (le) (rate(sockherd_request_duration_seconds_bucket",
        "sockherd_workers{",
        "sockherd_listen_queue_length",
        "sockherd_worker_restarts_total",
        "sockherd_slow_requests_total",
        "sockherd_worker_memory_bytes",
        "sockherd_worker_cpu_seconds_total",
        "sockherd_supervisor_state",
    ):
        assert needed in expressions


def test_panels_have_unique_ids_their_targets_a_datasource_and_they_do_not_overlap():
    every = dashboard()["panels"]
    assert len({panel["id"] for panel in every}) == len(every)
    taken: set[tuple[int, int]] = set()
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids) and all(t["expr"] for t in panel["targets"])


def test_compose_provisions_prometheus_with_the_rules_and_grafana_with_the_dashboard():
    with open(os.path.join(DOCKER, "compose.yaml")) as file:
        services = yaml.safe_load(file)["services"]
    mounts = {
        service: {v.split(":")[1]: v.split(":")[0] for v in spec.get("volumes", ())}
        for service, spec in services.items()
    }
    for target, source in [*mounts["prometheus"].items(), *mounts["grafana"].items()]:
        assert os.path.exists(os.path.join(DOCKER, source)), f"{source} (mounted at {target})"
    with open(os.path.join(CONFIG_DIR, "prometheus.yml")) as file:
        rule_files = yaml.safe_load(file)["rule_files"]
    assert {f"/etc/prometheus/{name}" for name in rule_files} <= set(mounts["prometheus"])
    provisioning = os.path.join(DOCKER, "grafana", "provisioning")
    with open(os.path.join(provisioning, "dashboards", "sockherd.yaml")) as file:
        provider = yaml.safe_load(file)["providers"][0]
    assert mounts["grafana"][provider["options"]["path"]] == "./grafana/dashboards"
    with open(os.path.join(provisioning, "datasources", "prometheus.yaml")) as file:
        source = yaml.safe_load(file)["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert mounts["grafana"]["/etc/grafana/provisioning"] == "./grafana/provisioning"


# --- promtool ---------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'; see .ci/run)")
    return subprocess.run(
        [binary, *args], cwd=CONFIG_DIR, capture_output=True, text=True, timeout=60
    )


def test_promtool_checks_the_prometheus_config_and_the_alert_rules():
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout + checked.stderr
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0 and "SUCCESS: 7 rules found" in rules.stdout, rules.stdout


def test_promtool_unit_tests_of_the_alert_rules_pass():
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_rule_has_a_unit_test():
    with open(os.path.join(CONFIG_DIR, "alerts.yml")) as file:
        alerts = {
            rule["alert"] for group in yaml.safe_load(file)["groups"] for rule in group["rules"]
        }
    with open(os.path.join(CONFIG_DIR, "alerts.test.yml")) as file:
        tests = yaml.safe_load(file)["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", ())
        if case.get("exp_alerts")
    }
    assert fired == alerts


# --- every query against a real Prometheus scraping a live sockherd --------------------------


@pytest.mark.timeout(240)
def test_every_panel_query_returns_data_from_a_real_prometheus_scraping_sockherd(tmp_path):
    control = str(tmp_path / "control.sock")
    metrics = f"127.0.0.1:{free_port()}"
    options = ("--metrics", metrics, "--control", control)
    with prefork_supervisor(*options) as (_, address), running_prometheus(metrics) as prometheus:
        sent = [0]

        def load(count: int) -> None:
            for _ in range(count):
                reply = tcp_request(address, b"echo %d\n" % sent[0])
                assert reply.endswith(b" %d\n" % sent[0])
                sent[0] += 1

        load(20)
        wait_until(lambda: prometheus.query('sockherd_requests_total{outcome="ok"} > 0'), 60, 0.25)
        # A worker killed and replaced: the exits and restarts panels get series too.
        victim = json.loads(ctl(control, "status", "--json").stdout)["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: prometheus.query('sockherd_worker_restarts_total{reason="crashed"} > 0'),
                   60, 0.25)  # fmt: skip

        results: dict[str, list] = {}

        def every_query_has_data() -> bool:
            load(3)  # bounded: at most 3 requests per poll, 60 polls
            for name, expression in queries():
                results[name] = prometheus.query(expression)
            return all(
                _finite(results[name]) for name, expression in queries() if not pending(expression)
            )

        try:
            wait_until(every_query_has_data, timeout=60, interval=1.0)
        except pytest.fail.Exception:
            empty = [
                f"{n}: {e}" for n, e in queries() if not pending(e) and not _finite(results[n])
            ]
            pytest.fail("panel queries without data:\n" + "\n".join(empty))
        now_pending = [n for n, e in queries() if pending(e) and results[n]]
        assert now_pending == [], (
            f"{now_pending} return data now: remove their metrics from PENDING_METRICS"
        )
        _check_variables(prometheus)
        _check_rules(prometheus)


def _finite(result: list) -> bool:
    """At least one sample with a number (a quantile over no requests is NaN: no data)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def _check_variables(prometheus) -> None:
    """The dashboard's variables list values (label_values(SELECTOR, LABEL) -> series API)."""
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert found, variable["definition"]
        selector, label = as_sent(found[1]), found[2]
        series = prometheus.api("series", **{"match[]": selector})
        assert {s[label] for s in series if label in s}, f"${variable['name']} has no values"


def _check_rules(prometheus) -> None:
    """Every alert rule evaluates without error on live data, and none fires on a healthy
    server; the rules read only metrics sockherd exports (or PENDING_METRICS)."""

    def all_evaluated():
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None

    rules = wait_until(all_evaluated, timeout=30, interval=0.25)
    assert {rule["name"]: rule["health"] for rule in rules} == dict.fromkeys(
        (rule["name"] for rule in rules), "ok"
    ), [rule.get("lastError") for rule in rules]
    firing = [alert for alert in prometheus.api("alerts")["alerts"] if alert["state"] == "firing"]
    assert firing == []
    exported = {name for name in _metric_families(prometheus) if name.startswith("sockherd_")}
    for rule in rules:
        unknown = metric_names(rule["query"]) - exported - PENDING_METRICS - {"up"}
        assert unknown == set(), f"{rule['name']} reads metrics sockherd does not export"


def _metric_families(prometheus) -> set[str]:
    names = prometheus.api("label/__name__/values")
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def test_a_query_with_a_typo_would_be_caught():
    """The check is real: Prometheus rejects a malformed expression with an HTTP error, and
    an unknown metric returns no data (so a renamed metric fails the test above)."""
    with running_prometheus("127.0.0.1:1", rules=False) as prometheus:

        def up() -> bool:
            try:
                return prometheus.query("vector(1)") != []
            except (OSError, ValueError):
                return False

        assert up()
        with pytest.raises(urllib.error.HTTPError):
            prometheus.query("sum by (le) (rate(sockherd_requests_total[1m])")
        assert prometheus.query("sockherd_no_such_metric_total") == []
