"""deploy/grafana/provisioning read as Grafana reads it (YAML, then its environment expansion):
a usable Prometheus datasource once PROMETHEUS_URL is set, and a dashboard provider whose folder
is the dashboards this repository ships, mounted where docs/operations.md says."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from deploy_tools import DEPLOY, REPO
from grafana_provisioning import go_expand_env, interpolate, read_provisioning

PROVISIONING = DEPLOY / "grafana" / "provisioning"
DATASOURCES = sorted((PROVISIONING / "datasources").glob("*.yaml"))
PROVIDERS = sorted((PROVISIONING / "dashboards").glob("*.yaml"))
OPERATIONS = (REPO / "docs" / "operations.md").read_text()
# The mounts docs/operations.md tells operators to make: container path -> repository folder.
MOUNTS = {
    "/etc/grafana/provisioning": PROVISIONING,
    "/var/lib/grafana/dashboards/modelyard": DEPLOY / "grafana" / "dashboards",
}
ENV = {"PROMETHEUS_URL": "http://prometheus.monitoring:9090"}


def test_interpolation_follows_grafana() -> None:
    env = {"HOST": "prom", "PORT": "9090", "A": "x"}
    assert interpolate("http://$HOST:${PORT}", env) == "http://prom:9090"
    assert interpolate("$__env{HOST}", env) == "prom"
    assert interpolate("cost $$5 and $$A", env) == "cost $5 and $A"
    assert interpolate("$UNSET", env) == ""
    # No default syntax: the whole `A:-fallback` is looked up as one name, which is unset.
    assert interpolate("${A:-fallback}", env) == ""
    assert go_expand_env("${A", env) == "A" and go_expand_env("100$", env) == "100$"


def _in_container(path: str) -> Path:
    for mount, folder in MOUNTS.items():
        if path == mount or path.startswith(mount + "/"):
            return folder / path[len(mount) :].lstrip("/")
    raise AssertionError(f"{path} is not under a mount docs/operations.md describes ({', '.join(MOUNTS)})")


def test_docs_describe_the_mounts_and_the_variable() -> None:
    for mount, folder in MOUNTS.items():
        assert f"`{folder.relative_to(REPO)}`" in OPERATIONS and f"`{mount}`" in OPERATIONS, mount
    assert "PROMETHEUS_URL" in OPERATIONS and "must be set" in OPERATIONS


@pytest.mark.parametrize("path", DATASOURCES, ids=lambda p: p.name)
def test_datasource_is_a_usable_prometheus_once_prometheus_url_is_set(path: Path) -> None:
    document = read_provisioning(path, ENV)
    assert document["apiVersion"] == 1
    datasources = document["datasources"]
    assert [d["type"] for d in datasources] == ["prometheus"]
    source = datasources[0]
    assert source["name"] and source["uid"] and source["access"] == "proxy" and source["isDefault"] is True
    url = urlsplit(source["url"])
    assert url.scheme in ("http", "https") and url.hostname, f"url {source['url']!r} is not an HTTP URL"
    assert source["url"] == ENV["PROMETHEUS_URL"]
    # The comment says what the expansion shows: without the variable there is no URL.
    assert read_provisioning(path, {})["datasources"][0]["url"] == ""
    assert "PROMETHEUS_URL must be set" in path.read_text()


@pytest.mark.parametrize("path", PROVIDERS, ids=lambda p: p.name)
def test_dashboard_provider_points_at_the_shipped_dashboards(path: Path) -> None:
    document = read_provisioning(path, ENV)
    assert document["apiVersion"] == 1
    for provider in document["providers"]:
        assert provider["type"] == "file" and provider["name"]
        folder = _in_container(provider["options"]["path"])
        dashboards = sorted(folder.glob("*.json"))
        assert folder.is_dir() and dashboards, f"{provider['options']['path']} ({folder}) holds no dashboard"
        for dashboard in dashboards:
            loaded = json.loads(dashboard.read_text())
            assert loaded["uid"] and loaded["title"], dashboard
