"""A real Prometheus scrapes real prometheus_client registries shaped like a Modelyard stack in the
middle of a canary, and every dashboard and alert expression is evaluated through its HTTP API.

The targets here stand in for the stack: metric objects are real prometheus_client collectors
observed under a steady request load. They can be made slow and failing on purpose, so this test
shows the latency and error-rate alerts firing for exactly the bad version, which the real-stack
test (test_prometheus_stack.py) cannot provoke without breaking a real model.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deploy_tools import DEPLOY
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_server import PrometheusServer, PromQLError, free_port
from promql_contract import dashboard_expressions, rule_expressions

DEPLOYMENT, MODEL = "text-embedding", "minilm"
OLD, NEW = "1.0.0", "2.0.0"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "modelyard.json"
RULES = DEPLOY / "prometheus" / "rules.yml"


@dataclass
class Target:
    """One /metrics endpoint with its own registry, like one Modelyard process."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    address: str = ""
    _server: Any = None

    def serve(self) -> None:
        server, _thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self._server = server
        self.address = f"127.0.0.1:{server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Worker(Target):
    def __init__(self) -> None:
        super().__init__()
        per_version = ["deployment", "model", "version"]
        r = self.registry
        self.requests = Histogram(
            "modelyard_request_duration_seconds", "", [*per_version, "outcome"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )  # fmt: skip
        self.queue = Histogram("modelyard_queue_duration_seconds", "", per_version, registry=r)
        self.batch = Histogram(
            "modelyard_batch_size", "", per_version, registry=r, buckets=(1, 2, 4, 8, 16, 32)
        )
        self.loaded = Gauge("modelyard_model_loaded", "", [*per_version, "checkpoint"], registry=r)
        self.load_seconds = Histogram("modelyard_model_load_seconds", "", per_version, registry=r)
        self.swaps = Counter("modelyard_swaps_total", "", ["deployment", "model", "outcome"], registry=r)
        self.weight = Gauge("modelyard_route_weight", "", per_version, registry=r)
        self.revision = Gauge("modelyard_worker_applied_revision", "", ["deployment"], registry=r)
        self.drift = Gauge("modelyard_drift_score", "", [*per_version, "signal"], registry=r)
        self.rpc = Histogram(
            "modelyard_rpc_duration_seconds", "", ["component", "service", "method", "code"], registry=r
        )
        # Present from the start, as a worker creates its counters before the first swap.
        for outcome in ("success", "failure"):
            self.swaps.labels(DEPLOYMENT, MODEL, outcome)

    def load(self, version: str, weight: float) -> None:
        self.loaded.labels(DEPLOYMENT, MODEL, version, f"sha256:{version}").set(1)
        self.load_seconds.labels(DEPLOYMENT, MODEL, version).observe(1.5)
        self.weight.labels(DEPLOYMENT, MODEL, version).set(weight)

    def serve_request(self, version: str, latency_s: float, ok: bool) -> None:
        self.requests.labels(DEPLOYMENT, MODEL, version, "success" if ok else "error").observe(latency_s)
        self.queue.labels(DEPLOYMENT, MODEL, version).observe(latency_s / 4)
        self.batch.labels(DEPLOYMENT, MODEL, version).observe(random.choice((1, 4, 8)))
        code = "OK" if ok else "INTERNAL"
        self.rpc.labels("worker", "inference.GRPCInferenceService", "ModelInfer", code).observe(latency_s)


class Registry(Target):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.watchers = Gauge("modelyard_registry_watchers", "", registry=r)
        self.weight = Gauge(
            "modelyard_deployment_route_weight", "", ["deployment", "model", "version"], registry=r
        )
        self.revision = Gauge("modelyard_deployment_revision", "", ["deployment"], registry=r)
        self.converged = Gauge("modelyard_rollout_converged", "", ["deployment"], registry=r)
        self.step = Gauge("modelyard_rollout_step", "", ["deployment"], registry=r)
        self.outcomes = Counter("modelyard_rollout_outcome_total", "", ["deployment", "outcome"], registry=r)
        self.rpc = Histogram(
            "modelyard_rpc_duration_seconds", "", ["component", "service", "method", "code"], registry=r
        )


class Benchmark(Target):
    def __init__(self) -> None:
        super().__init__()
        self.rpc = Histogram(
            "modelyard_rpc_duration_seconds",
            "",
            ["component", "service", "method", "code"],
            registry=self.registry,
        )


@dataclass
class Stack:
    registry: Registry
    swapped: Worker  # took the canary
    behind: Worker  # failed to load it, still on the old revision
    benchmark: Benchmark
    dead_registry: str  # addresses where nothing listens
    dead_worker: str
    canary: threading.Event


def load_generator(stack: Stack, stop: threading.Event) -> None:
    """Steady ModelInfer-like traffic: the old version is fast, the canary slow and flaky."""
    rng = random.Random(7)
    while not stop.is_set():
        for worker in (stack.swapped, stack.behind):
            worker.serve_request(OLD, rng.uniform(0.01, 0.05), ok=rng.random() > 0.02)
        if stack.canary.is_set():
            stack.swapped.serve_request(NEW, rng.uniform(0.7, 0.9), ok=rng.random() > 0.3)
        stack.registry.rpc.labels(
            "registry", "modelyard.registry.v1.RegistryService", "GetDeployment", "OK"
        ).observe(0.002)
        stack.benchmark.rpc.labels(
            "benchmark", "modelyard.benchmark.v1.BenchmarkService", "ListRuns", "OK"
        ).observe(0.003)
        stop.wait(0.02)


def swap_to_canary(stack: Stack) -> None:
    """What the registry and workers report once revision 8 routes 90/10 to the new version."""
    stack.registry.revision.labels(DEPLOYMENT).set(8)
    stack.registry.weight.labels(DEPLOYMENT, MODEL, OLD).set(90)
    stack.registry.weight.labels(DEPLOYMENT, MODEL, NEW).set(10)
    stack.registry.converged.labels(DEPLOYMENT).set(0)
    stack.swapped.load(NEW, 10)
    stack.swapped.weight.labels(DEPLOYMENT, MODEL, OLD).set(90)
    stack.swapped.swaps.labels(DEPLOYMENT, MODEL, "success").inc()
    stack.swapped.revision.labels(DEPLOYMENT).set(8)
    stack.behind.swaps.labels(DEPLOYMENT, MODEL, "failure").inc()
    # The canary's vectors are not the old version's; the old version's traffic did not change.
    stack.swapped.drift.labels(DEPLOYMENT, MODEL, NEW, "output_cosine").set(0.45)
    stack.swapped.drift.labels(DEPLOYMENT, MODEL, OLD, "output_cosine").set(0.04)
    # A rollout plan of another version was rolled back earlier (a created counter, then one increase).
    stack.registry.outcomes.labels(DEPLOYMENT, "rolled_back").inc()
    stack.canary.set()


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack(Registry(), Worker(), Worker(), Benchmark(), f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
              threading.Event())  # fmt: skip
    s.registry.watchers.set(2)
    s.registry.revision.labels(DEPLOYMENT).set(7)
    s.registry.weight.labels(DEPLOYMENT, MODEL, OLD).set(100)
    s.registry.converged.labels(DEPLOYMENT).set(1)
    s.registry.outcomes.labels(DEPLOYMENT, "rolled_back")
    for worker in (s.swapped, s.behind):
        worker.load(OLD, 100)
        worker.revision.labels(DEPLOYMENT).set(7)
    targets: list[Target] = [s.registry, s.swapped, s.behind, s.benchmark]
    for target in targets:
        target.serve()
    stop = threading.Event()
    traffic = threading.Thread(target=load_generator, args=(s, stop), daemon=True)
    traffic.start()
    try:
        yield s
    finally:
        stop.set()
        traffic.join()
        for target in targets:
            target.close()


@pytest.fixture
def prometheus(prometheus_binary: str, stack: Stack, tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer.start(
        prometheus_binary,
        config=DEPLOY / "prometheus" / "prometheus.yml",
        rules=RULES,
        targets={
            "modelyard-registry": [stack.registry.address, stack.dead_registry],
            "modelyard-worker": [stack.swapped.address, stack.behind.address, stack.dead_worker],
            "modelyard-benchmark": [stack.benchmark.address],
        },
        workdir=tmp_path / "prometheus",
    )
    try:
        yield server
    finally:
        server.stop()


def versions(series: list[dict[str, Any]]) -> set[str]:
    return {s["metric"]["version"] for s in series if "version" in s["metric"]}


# What each alert expression must return in this scenario: the label values of its series.
ALERT_EXPECTATIONS: dict[str, Callable[[Stack, list[dict[str, Any]]], bool]] = {
    # Only the canary is slow (p99 around 0.9 s); the old version stays under 50 ms.
    "ModelyardVersionLatencyHigh": lambda _, r: versions(r) == {NEW},
    "ModelyardVersionErrorRateHigh": lambda _, r: versions(r) == {NEW},
    "ModelyardSwapFailed": lambda _, r: [s["metric"]["deployment"] for s in r] == [DEPLOYMENT],
    "ModelyardDeploymentNotConverged": lambda _, r: [s["metric"]["deployment"] for s in r] == [DEPLOYMENT],
    "ModelyardDriftHigh": lambda _, r: versions(r) == {NEW},
    "ModelyardRolloutRolledBack": lambda _, r: [s["metric"]["deployment"] for s in r] == [DEPLOYMENT],
    "ModelyardRegistryDown": lambda s, r: [x["metric"]["instance"] for x in r] == [s.dead_registry],
    "ModelyardWorkerNotServing": lambda s, r: [x["metric"]["instance"] for x in r] == [s.dead_worker],
}


def dashboard_expectation(series: list[dict[str, Any]]) -> bool:
    """Some series; where the expression keeps `version`, both the old and the canary version."""
    if not series:
        return False
    return not any("version" in s["metric"] for s in series) or versions(series) == {OLD, NEW}


def expectations_hold(
    prometheus: PrometheusServer, stack: Stack
) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]]]:
    """Evaluate every dashboard and alert expression; what failed (why) and what each returned."""
    failures: dict[str, str] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    checks: list[tuple[str, str, Callable[[list[dict[str, Any]]], bool]]] = [
        (where, expr, dashboard_expectation) for where, expr in dashboard_expressions(DASHBOARD).items()
    ]
    for alert, expr in rule_expressions(RULES).items():
        expected = ALERT_EXPECTATIONS[alert]
        checks.append((f"alert {alert}", expr, functools.partial(expected, stack)))
    for where, expr, holds in checks:
        try:
            results[where] = prometheus.query(expr)
        except PromQLError as error:
            failures[where] = f"error: {error}"
            continue
        if not holds(results[where]):
            failures[where] = f"unexpected result: {[s['metric'] for s in results[where]]}"
    return failures, results


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (waited {timeout_s}s)")
        time.sleep(0.25)


def test_every_alert_has_an_expectation() -> None:
    assert set(rule_expressions(RULES)) == set(ALERT_EXPECTATIONS)


def test_dashboard_and_alerts_evaluate_on_a_real_prometheus_after_a_swap(
    prometheus: PrometheusServer, stack: Stack
) -> None:
    # Scraped at least twice before the swap, so counters have a "before" to increase from.
    wait_for(
        lambda: len(prometheus.query("count_over_time(up[1m]) >= 2")) == 6,
        timeout_s=20,
        what="all six targets scraped twice",
    )
    healthy = {t["scrapeUrl"] for t in prometheus.active_targets() if t["health"] == "up"}
    assert len(healthy) == 4, healthy
    swap_to_canary(stack)

    failures: dict[str, str] = {"not evaluated": ""}
    deadline = time.monotonic() + 30
    while failures and time.monotonic() < deadline:
        time.sleep(1)
        failures, results = expectations_hold(prometheus, stack)
    assert not failures, "\n".join(f"{where}: {why}" for where, why in failures.items())
    assert len(results) >= 20

    # Prometheus itself loaded rules.yml and evaluates every rule without error.
    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert {r["name"] for r in rules} == set(ALERT_EXPECTATIONS)
    assert all(r["health"] in ("ok", "unknown") for r in rules), [
        (r["name"], r.get("lastError")) for r in rules
    ]
    wait_for(
        lambda: any(r["health"] == "ok" for g in prometheus.api("rules")["groups"] for r in g["rules"]),
        timeout_s=5,
        what="rules evaluated",
    )


def test_a_bad_expression_is_reported(prometheus: PrometheusServer) -> None:
    with pytest.raises(PromQLError):
        prometheus.query("sum by (version (up)")
