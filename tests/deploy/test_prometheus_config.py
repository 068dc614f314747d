"""deploy/prometheus and deploy/grafana: promtool accepts the configuration and rules, every
dashboard expression is valid PromQL, and everything reads only the metric contract."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_tools import DEPLOY
from promql_contract import (
    CONTRACT_SERIES,
    dashboard_expressions,
    dashboard_variable_queries,
    metric_names,
    rule_expressions,
)

PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES_YML = DEPLOY / "prometheus" / "rules.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
REQUIRED_ALERTS = {
    "ModelyardVersionLatencyHigh",
    "ModelyardSwapFailed",
    "ModelyardDeploymentNotConverged",
    "ModelyardRegistryDown",
    "ModelyardWorkerNotServing",
}


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, check=False, timeout=60)


def check_as_recording_rules(promtool: str, expressions: dict[str, str], tmp_path: Path) -> None:
    """promtool has no offline `check expr`; `check rules` parses every expression it loads."""
    rules = [{"record": f"modelyard:check:{i}", "expr": expr} for i, expr in enumerate(expressions.values())]
    path = tmp_path / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    result = promtool_run(promtool, "check", "rules", str(path))
    where = "\n".join(f"modelyard:check:{i} = {key}" for i, key in enumerate(expressions))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{where}"


def test_promtool_check_config(promtool: str) -> None:
    result = promtool_run(promtool, "check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules(promtool: str) -> None:
    result = promtool_run(promtool, "check", "rules", str(RULES_YML))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_jobs_cover_every_service() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"modelyard-registry", "modelyard-worker", "modelyard-benchmark"}
    for job in config["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            for name in sd["files"]:
                targets = json.loads((PROMETHEUS_YML.parent / name).read_text())
                assert targets and all(t["targets"] for t in targets), name


def test_rules_cover_the_required_alerts() -> None:
    assert REQUIRED_ALERTS <= set(rule_expressions(RULES_YML))


def test_rules_read_only_contract_metrics() -> None:
    for name, expr in rule_expressions(RULES_YML).items():
        names = metric_names(expr)
        assert names, f"{name} selects no series"
        assert names <= CONTRACT_SERIES, (
            f"{name} reads metrics outside the contract: {names - CONTRACT_SERIES}"
        )


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_expressions_are_valid_promql(promtool: str, path: Path, tmp_path: Path) -> None:
    expressions = dashboard_expressions(path)
    assert len(expressions) >= 10
    check_as_recording_rules(promtool, expressions, tmp_path)


def test_syntax_check_rejects_invalid_promql(promtool: str, tmp_path: Path) -> None:
    # Guards the check above: a missing parenthesis must be reported.
    with pytest.raises(AssertionError):
        check_as_recording_rules(promtool, {"broken": "sum by (version (up)"}, tmp_path)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_reads_only_contract_metrics(path: Path) -> None:
    for where, expr in dashboard_expressions(path).items():
        names = metric_names(expr)
        assert names, f"{where} selects no series"
        assert names <= CONTRACT_SERIES, (
            f"{where} reads metrics outside the contract: {names - CONTRACT_SERIES}"
        )
    for variable, metric in dashboard_variable_queries(path).items():
        assert metric in CONTRACT_SERIES, f"variable {variable} reads {metric}"


def test_contract_check_catches_an_unknown_metric() -> None:
    names = metric_names('sum by (version) (rate(modelyard_request_latency_seconds_count{outcome="ok"}[5m]))')
    assert names == {"modelyard_request_latency_seconds_count"}
    assert not names <= CONTRACT_SERIES


def test_dashboard_shows_what_operators_need() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "modelyard.json").read_text())
    text = json.dumps(dashboard)
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (deployment, version, le)" in text
    expressions = dashboard_expressions(DEPLOY / "grafana" / "dashboards" / "modelyard.json")
    used = set().union(*(metric_names(e) for e in expressions.values()))
    for series in (
        "modelyard_request_duration_seconds_count",
        "modelyard_batch_size_count",
        "modelyard_queue_duration_seconds_bucket",
        "modelyard_deployment_route_weight",
        "modelyard_worker_applied_revision",
    ):
        assert series in used, f"no panel shows {series}"
    swaps = [a for a in dashboard["annotations"]["list"] if "modelyard_swaps_total" in a.get("expr", "")]
    assert swaps, "swaps are not annotated"
    assert all(
        re.search(r"\$\{?datasource", json.dumps(p["datasource"]))
        for p in dashboard["panels"]
        if "targets" in p
    )


def test_grafana_provisioning_files_parse() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((provisioning / "dashboards" / "modelyard.yaml").read_text())
    assert providers["providers"][0]["type"] == "file"
