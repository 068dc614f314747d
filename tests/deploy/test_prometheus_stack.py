"""A real Prometheus scraping the real stack (registry, two workers, the benchmark service) under
load: every dashboard and alert expression evaluates through the HTTP API, the per-version panels
show both versions after a canary swap, and the alerts pick out exactly what is wrong."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_server import PrometheusServer, free_port
from promql_contract import dashboard_expressions, rule_expressions
from support import ServerProcess, spawn_registry
from worker_support import registry_version, text_request, wait_model_ready

from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.api import registry_pb2_grpc

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "modelyard.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
OLD, NEW, BROKEN = "1.0.0", "1.1.0", "1.2.0"


def versions(series: list[dict[str, Any]]) -> set[str]:
    return {s["metric"]["version"] for s in series if "version" in s["metric"]}


def shows_both_versions(series: list[dict[str, Any]]) -> bool:
    """Some series; where the expression keeps `version`, at least the old and the canary one."""
    if not series:
        return False
    return not any("version" in s["metric"] for s in series) or {OLD, NEW} <= versions(series)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (waited {timeout_s}s)")
        time.sleep(0.25)


class Load:
    """Steady ModelInfer traffic to every worker; failures are counted, not raised."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.stop = threading.Event()
        self.sent = 0
        self.failed: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        channels = [grpc.insecure_channel(a) for a in self.addresses]
        stubs = [oip_grpc.GRPCInferenceServiceStub(c) for c in channels]
        while not self.stop.is_set():
            for stub in stubs:
                try:
                    stub.ModelInfer(text_request("text", ["a steady request"]), timeout=10)
                except grpc.RpcError as exc:
                    self.failed.append(str(exc.code()))
                self.sent += 1
            time.sleep(0.02)
        for channel in channels:
            channel.close()

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


@pytest.fixture
def tiny_text_models(tmp_path: Path) -> dict[str, Path]:
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    return {OLD: build_tiny_sentence_transformer(tmp_path / "a", seed=0),
            NEW: build_tiny_sentence_transformer(tmp_path / "b", seed=1)}  # fmt: skip


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.kill()


def test_dashboard_and_alerts_on_the_real_stack(
    prometheus_binary: str,
    database_url: str,
    tiny_text_models: dict[str, Path],
    processes: list[ServerProcess],
    tmp_path: Path,
) -> None:
    registry = spawn_registry(database_url)
    processes.append(registry)
    channel = grpc.insecure_channel(registry.address)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    for version, path in tiny_text_models.items():
        stub.RegisterVersion(rpb.RegisterVersionRequest(
            version=registry_version(path, version, model_id="tiny-text", dim=32),
            create_model=True, model_type=rpb.TEXT_EMBEDDING,
        ))  # fmt: skip
    stub.CreateDeployment(rpb.CreateDeploymentRequest(
        name="text", model_id="tiny-text", routes=[rpb.Route(version=OLD, weight=100)]
    ))  # fmt: skip
    workers = []
    for i in range(2):
        worker = ServerProcess(
            ["-m", "modelyard.inference", "--registry", registry.address, "--deployment", "text",
             "--port", "0", "--metrics-port", "0", "--cache-dir", str(tmp_path / f"cache{i}")],
            timeout=120,
        )  # fmt: skip
        processes.append(worker)
        workers.append(worker)
    benchmark = ServerProcess(
        ["-m", "modelyard.benchmark", "--registry", registry.address, "--port", "0", "--metrics-port", "0"]
    )
    processes.append(benchmark)
    for worker in workers:
        wait_model_ready(worker.address, "text", OLD)

    dead_registry, dead_worker = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    metrics = {p: f"127.0.0.1:{p.metrics_port}" for p in processes}
    prometheus = PrometheusServer.start(
        prometheus_binary,
        config=DEPLOY / "prometheus" / "prometheus.yml",
        rules=RULES,
        targets={
            "modelyard-registry": [metrics[registry], dead_registry],
            "modelyard-worker": [*(metrics[w] for w in workers), dead_worker],
            "modelyard-benchmark": [metrics[benchmark]],
        },
        workdir=tmp_path / "prometheus",
    )
    try:
        with Load([w.address for w in workers]) as load:
            wait_for(
                lambda: len(prometheus.query("count_over_time(up[1m]) >= 2")) == 6, 30, "targets scraped"
            )

            # Canary: both versions serve, so every per-version panel must show both.
            canary = stub.SetRoutes(rpb.SetRoutesRequest(
                name="text", routes=[rpb.Route(version=OLD, weight=50), rpb.Route(version=NEW, weight=50)]
            ))  # fmt: skip
            status = stub.GetRolloutStatus(
                rpb.GetRolloutStatusRequest(deployment="text", wait_timeout_ms=60_000)
            )
            assert status.converged and status.revision == canary.revision
            failures = check(prometheus, healthy_expectations(dead_registry, dead_worker))
            assert not failures, "\n".join(f"{where}: {why}" for where, why in failures.items())

            # A version whose checkpoint does not match its artifact: the swap fails, the rollout stalls.
            bad = registry_version(
                tiny_text_models[NEW], BROKEN, model_id="tiny-text", dim=32, checkpoint="0" * 64
            )
            stub.RegisterVersion(rpb.RegisterVersionRequest(version=bad))
            stub.SetRoutes(rpb.SetRoutesRequest(name="text", routes=[
                rpb.Route(version=OLD, weight=50), rpb.Route(version=NEW, weight=50), rpb.Route(version=BROKEN, weight=0),
            ]))  # fmt: skip
            failures = check(prometheus, broken_expectations())
            assert not failures, "\n".join(f"{where}: {why}" for where, why in failures.items())
        # The panels' expectations above already need traffic in every phase; this checks the load
        # ran throughout and never failed. How many it sent depends on the machine's load (88 in a
        # CI run on a busy machine), so the floor is low.
        assert load.sent > 20 and not load.failed, f"{len(load.failed)} of {load.sent} requests failed"
    finally:
        prometheus.stop()
        channel.close()


Expectation = Callable[[list[dict[str, Any]]], bool]


def healthy_expectations(dead_registry: str, dead_worker: str) -> dict[str, tuple[str, Expectation]]:
    checks: dict[str, tuple[str, Expectation]] = {
        where: (expr, shows_both_versions) for where, expr in dashboard_expressions(DASHBOARD).items()
    }
    alerts: dict[str, Expectation] = {
        "ModelyardVersionLatencyHigh": lambda r: r == [],
        "ModelyardVersionErrorRateHigh": lambda r: r == [],
        "ModelyardSwapFailed": lambda r: r == [],
        "ModelyardDeploymentNotConverged": lambda r: r == [],
        # One steady sentence: the old version serves its reference's distribution exactly; the new
        # one (another tiny model, seed 1) may drift once enough items passed the reference.
        "ModelyardDriftHigh": lambda r: OLD not in {s["metric"]["version"] for s in r},
        "ModelyardRolloutRolledBack": lambda r: r == [],
        "ModelyardRegistryDown": lambda r: [s["metric"]["instance"] for s in r] == [dead_registry],
        "ModelyardWorkerNotServing": lambda r: [s["metric"]["instance"] for s in r] == [dead_worker],
    }
    for alert, expr in rule_expressions(RULES).items():
        checks[f"alert {alert}"] = (expr, alerts[alert])
    return checks


def broken_expectations() -> dict[str, tuple[str, Expectation]]:
    rules = rule_expressions(RULES)
    return {
        f"alert {name}": (rules[name], lambda r: [s["metric"]["deployment"] for s in r] == ["text"])
        for name in ("ModelyardSwapFailed", "ModelyardDeploymentNotConverged")
    }


def check(prometheus: PrometheusServer, checks: dict[str, tuple[str, Expectation]]) -> dict[str, str]:
    """Evaluate every expression until all hold or 40 s pass; what failed and why."""
    deadline = time.monotonic() + 40
    while True:
        failures = {}
        for where, (expr, holds) in checks.items():
            series = prometheus.query(expr)
            if not holds(series):
                failures[where] = f"unexpected result: {[s['metric'] for s in series]}"
        if not failures or time.monotonic() > deadline:
            return failures
        time.sleep(1)
