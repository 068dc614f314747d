"""The metric contract of Modelyard and the PromQL expressions deploy/ builds on it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

HISTOGRAMS = {
    "modelyard_request_duration_seconds",
    "modelyard_queue_duration_seconds",
    "modelyard_batch_size",
    "modelyard_model_load_seconds",
    "modelyard_rpc_duration_seconds",
}
GAUGES = {
    "modelyard_model_loaded",
    "modelyard_route_weight",
    "modelyard_worker_applied_revision",
    "modelyard_registry_watchers",
    "modelyard_deployment_route_weight",
    "modelyard_deployment_revision",
    "modelyard_rollout_converged",
    "modelyard_rollout_step",
    "modelyard_drift_score",
    # Prometheus' own series, one per scrape target.
    "up",
}
COUNTERS = {"modelyard_swaps_total", "modelyard_rollout_outcome_total"}

# Exposed series names: histograms only ever appear through their three suffixes.
CONTRACT_SERIES = (
    {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")} | GAUGES | COUNTERS
)

# Grafana variables, replaced by what Grafana would send with every option selected.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$deployment": ".*",
    "$version": ".*",
}

_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
}
_TOKEN = re.compile(r"(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)")


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression as Prometheus would receive it from Grafana."""
    # Longest names first so `$__rate_interval` is not read as `$__range`-something.
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}")
    return expr


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects (not labels, functions, keywords or numbers)."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    stripped = re.sub(r"\{[^}]*\}", " ", stripped)
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", stripped)
    names = set()
    for match in _TOKEN.finditer(stripped):
        ident = match.group("ident")
        if ident is None or ident in _KEYWORDS:
            continue
        if re.match(r"\s*\(", stripped[match.end() :]):
            continue  # a function call
        names.add(ident)
    return names


def dashboard_expressions(path: Path) -> dict[str, str]:
    """Every PromQL expression of a Grafana dashboard (panels and annotations), keyed by where
    it sits, with Grafana's variables substituted."""
    dashboard = json.loads(path.read_text())
    found: dict[str, str] = {}

    def visit_panels(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            visit_panels(panel.get("panels", []))
            for target in panel.get("targets", []):
                found[f"panel {panel['title']!r} target {target['refId']}"] = grafana_to_promql(
                    target["expr"]
                )

    visit_panels(dashboard["panels"])
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            found[f"annotation {annotation['name']!r}"] = grafana_to_promql(annotation["expr"])
    return found


def dashboard_variable_queries(path: Path) -> dict[str, str]:
    """The metric each `label_values(metric{...}, label)` template variable reads, by variable."""
    dashboard = json.loads(path.read_text())
    metrics = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((?P<metric>[A-Za-z_:][A-Za-z0-9_:]*)[^,]*,\s*\w+\)", query)
        if match is None:
            raise ValueError(f"variable {variable['name']} has a query this check does not know: {query!r}")
        metrics[variable["name"]] = match.group("metric")
    return metrics


def rule_expressions(path: Path) -> dict[str, str]:
    """Every expression of a Prometheus rules file, keyed by alert or record name."""
    document = yaml.safe_load(path.read_text())
    found = {}
    for group in document["groups"]:
        for rule in group["rules"]:
            found[rule.get("alert") or rule["record"]] = rule["expr"]
    return found
