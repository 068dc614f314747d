"""The web console against `modelyard up` as users deploy it (admin and reader tokens), in a real
headless Chromium: the catalog, a switch clicked under steady OIP load, the compare page's charts,
and what a reader, a forger and an unacknowledged incompatible switch are refused. One stack and one
browser for the module; tiny text models (two text workers) keep it quick on two cores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from console_support import WorkerLoad, chromium, get, log_in, post, screenshot, session_of, wait_for
from selenium.webdriver.common.by import By
from up_support import modelyard_up

from modelyard.api import registry_pb2 as pb
from modelyard.client.sync import RegistryClient
from modelyard.common.auth import new_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
DEPLOYMENT = "text-embedding"
MODEL = "tiny-text"
FILLERS = [f"0.5.{i}" for i in range(12)]
PAGE_SIZE = 5


@dataclass
class Stack:
    up: subprocess.Popen[str]
    state: dict[str, Any]
    env: dict[str, str]
    root: Path
    admin_token: str
    reader_token: str
    url: str = ""
    runs: dict[str, pb.BenchmarkRun] = field(default_factory=dict)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "modelyard.cli.main", *args],
            env=self.env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"modelyard {' '.join(args)} -> {done.returncode}\n{done.stderr}"
        return done.stdout

    def registry(self) -> RegistryClient:
        return RegistryClient(self.state["registry"]["address"], token=self.admin_token)

    def deployment(self) -> pb.Deployment:
        with self.registry() as registry:
            return registry.get_deployment(pb.GetDeploymentRequest(name=DEPLOYMENT))

    def text_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.state["workers"] if w["deployment"] == DEPLOYMENT]


def _record_runs(stack: Stack) -> None:
    """Two stored runs with known metrics, as the benchmark service records them."""
    recall = {
        "0.1.0": [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0],
        "0.2.0": [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0],
    }
    ndcg = {
        "0.1.0": [0.9, 0.1, 0.8, 0.7, 0.2, 0.9, 0.6, 0.8],
        "0.2.0": [0.95, 0.6, 0.9, 0.3, 0.7, 0.9, 0.8, 0.85],
    }
    latency = {"0.1.0": [4.0, 5.0, 6.0, 5.5, 4.5, 7.5], "0.2.0": [3.0, 3.5, 4.0, 3.2, 3.8, 6.0]}
    figures = {"0.1.0": (5.25, 7.25, 7.45, 181.5), "0.2.0": (3.65, 5.45, 5.91, 252.25)}
    with stack.registry() as registry:
        for version in ("0.1.0", "0.2.0"):
            p50, p95, p99, rps = figures[version]
            metrics = [
                pb.Metric(
                    name="recall@10", value=sum(recall[version]) / 8, unit="ratio", samples=recall[version]
                ),
                pb.Metric(name="ndcg@10", value=sum(ndcg[version]) / 8, unit="ratio", samples=ndcg[version]),
                pb.Metric(
                    name="latency_ms[c=1]",
                    value=sum(latency[version]) / 6,
                    unit="ms",
                    samples=latency[version],
                ),
                pb.Metric(name="latency_p50_ms[c=1]", value=p50, unit="ms"),
                pb.Metric(name="latency_p95_ms[c=1]", value=p95, unit="ms"),
                pb.Metric(name="latency_p99_ms[c=1]", value=p99, unit="ms"),
                pb.Metric(name="throughput_rps[c=1]", value=rps, unit="requests/s"),
            ]
            run = pb.BenchmarkRun(
                run_id=f"console-{version}-{uuid.uuid4().hex[:8]}",
                suite="stdlib-docstrings",
                model_id=MODEL,
                version=version,
                deployment=DEPLOYMENT,
                status=pb.RUN_STATUS_SUCCEEDED,
                conditions={"concurrency": "1"},
                hardware="cpu",
                metrics=metrics,
            )
            stack.runs[version] = registry.record_benchmark_run(pb.RecordBenchmarkRunRequest(run=run))


def _register_versions(stack: Stack) -> None:
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    other = build_tiny_sentence_transformer(stack.root / "tiny-b", seed=1)
    wide = build_tiny_sentence_transformer(stack.root / "tiny-wide", seed=2, hidden=48)
    stack.cli(
        "models", "import", str(other), "--model", MODEL, "--version", "0.2.0", "--description", "retrained"
    )
    stack.cli(
        "models", "import", str(wide), "--model", MODEL, "--version", "0.3.0", "--description", "48-dim"
    )
    with stack.registry() as registry:
        base = registry.get_version(pb.GetVersionRequest(model_id=MODEL, version="0.2.0"))
        for version in FILLERS:
            draft = pb.ModelVersion()
            draft.CopyFrom(base)
            for name in ("created_at", "created_by", "status", "aliases"):
                draft.ClearField(name)
            draft.version, draft.description = version, "paging filler"
            registry.register_version(pb.RegisterVersionRequest(version=draft))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="modelyard-console-"))
    root.chmod(0o755)  # the embedded PostgreSQL may run as an unprivileged user
    admin_token, reader_token = new_token(), new_token()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "MODELYARD_ARTIFACT_STORE": str(root / "artifacts"),
        "MODELYARD_ADMIN_TOKENS": f"ops:{admin_token}",
        "MODELYARD_READER_TOKENS": f"dash:{reader_token}",
        "MODELYARD_CONSOLE_PAGE_SIZE": str(PAGE_SIZE),
    }
    try:
        with modelyard_up(root, env, "--tiny-text", "--text-workers", "2") as running:
            state = running.state
            for name in ("MODELYARD_ADMIN_TOKENS", "MODELYARD_READER_TOKENS"):
                del env[name]
            env.update(
                MODELYARD_REGISTRY_ADDRESS=state["registry"]["address"],
                MODELYARD_BENCHMARK_ADDRESS=state["benchmark"]["address"],
                MODELYARD_TOKEN=admin_token,
            )
            url = state["console"]["url"].rstrip("/")
            stack = Stack(running.process, state, env, root, admin_token, reader_token, url=url)
            _register_versions(stack)
            _record_runs(stack)
            yield stack
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def _cards(driver: Any) -> list[tuple[str, str]]:
    return [
        (c.get_attribute("data-model"), c.get_attribute("data-version"))
        for c in driver.find_elements(By.CSS_SELECTOR, "#cards article.card")
    ]


def test_catalog_shows_the_seeded_models_and_searches_and_pages(stack: Stack, browser: Any) -> None:
    log_in(browser, stack.url, stack.admin_token)
    browser.get(stack.url + "/catalog")
    chips = {
        c.get_attribute("data-model") for c in browser.find_elements(By.CSS_SELECTOR, "#models .model-chip")
    }
    assert {"tiny-text", "tiny-clip", "tiny-captioner"} <= chips
    browser.get(stack.url + "/catalog?model=tiny-clip")
    (card,) = browser.find_elements(By.CSS_SELECTOR, "#cards article.card")
    assert card.get_attribute("data-version") == "0.1.0"
    assert card.find_element(By.CSS_SELECTOR, "[data-field=loader]").text == "open-clip"
    assert card.find_element(By.CSS_SELECTOR, "[data-alias]").get_attribute("data-alias") == "production"
    with stack.registry() as registry:
        stored = registry.get_version(pb.GetVersionRequest(model_id="tiny-clip", version="0.1.0"))
    assert card.find_element(By.CSS_SELECTOR, "[data-field=checkpoint]").text == stored.checkpoint_hash[:12]
    assert (
        card.find_element(By.CSS_SELECTOR, "[data-field=embedding-dim]").text
        == f"{stored.signature.embedding_dim}-dim"
    )

    # Search through the form, as a user types it.
    browser.get(stack.url + "/catalog")
    browser.find_element(By.ID, "q").send_keys("paging filler")
    browser.find_element(By.CSS_SELECTOR, "#model option[value='tiny-text']").click()
    browser.find_element(By.ID, "search-submit").click()
    wait_for(lambda: "q=paging" in browser.current_url, what="the search results")
    seen: list[list[tuple[str, str]]] = []
    while True:
        page = _cards(browser)
        assert 0 < len(page) <= PAGE_SIZE
        seen.append(page)
        following = browser.find_elements(By.ID, "next-page")
        if not following:
            break
        following[0].click()
        wait_for(
            lambda n=len(seen): (
                browser.find_element(By.ID, "page-info").get_attribute("data-page") == str(n + 1)
            )
        )
    found = [version for page in seen for _, version in page]
    assert sorted(found) == sorted(FILLERS), "every match once, across pages"
    assert len(seen) == -(-len(FILLERS) // PAGE_SIZE)
    # Back one page: the same versions as when we went forward.
    browser.find_element(By.ID, "previous-page").click()
    wait_for(
        lambda: browser.find_element(By.ID, "page-info").get_attribute("data-page") == str(len(seen) - 1)
    )
    assert _cards(browser) == seen[-2]
    browser.get(stack.url + "/catalog?model=tiny-text")
    screenshot(browser, "catalog")


_ROWS = "return [...document.querySelectorAll('#live tr[data-worker]')].map(r => [r.dataset.worker, r.dataset.serving, r.dataset.converged]);"


_SWITCHED = (
    "const out = {}; for (const row of document.querySelectorAll('#live tr[data-worker]')) {"
    " const cell = row.querySelector('td[data-switched-s]');"
    " if (cell) out[row.dataset.worker] = parseFloat(cell.dataset.switchedS); } return out;"
)


def test_switch_by_clicking_under_load_fails_no_request_and_shows_every_worker_flip(
    stack: Stack, browser: Any
) -> None:
    log_in(browser, stack.url, stack.admin_token)
    browser.get(stack.url + f"/deployments/{DEPLOYMENT}")
    rows = wait_for(lambda: browser.execute_script(_ROWS), what="the worker rows")
    assert len(rows) == 2 and all(serving == "0.1.0" for _, serving, _ in rows), rows
    load = WorkerLoad(_workers(stack), DEPLOYMENT, "0.2.0", token=stack.reader_token, pause_s=0.01)
    try:
        wait_for(lambda: sum(load.versions.values()) > 20, what="steady load")
        browser.find_element(By.ID, "switch-0.2.0").click()
        compat = wait_for(lambda: browser.find_element(By.ID, "compatibility"), what="the confirmation")
        assert compat.get_attribute("data-compatible") == "true"
        screenshot(browser, "switch-confirm")
        browser.find_element(By.ID, "confirm-switch").click()
        wait_for(
            lambda: browser.find_elements(By.ID, "switched"), what="the deployment page after the switch"
        )
        # From here on the page must update by itself: a reload would drop this marker.
        browser.execute_script("window.__sameDocument = true;")
        states: dict[str, list[str]] = {}
        done_at = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = browser.execute_script(_ROWS)
            for worker, serving, _ in rows:
                if not states.get(worker) or states[worker][-1] != serving:
                    states.setdefault(worker, []).append(serving)
            if len(rows) == 2 and all("0.2.0" in s.split() and c == "true" for _, s, c in rows):
                done_at = time.monotonic()
                break
            time.sleep(0.05)
        assert done_at is not None, f"the page never showed every worker on 0.2.0: {states}"
        assert browser.execute_script("return window.__sameDocument === true;"), "the page was reloaded"
        time.sleep(0.5)
        # Each worker the page saw flip says how long after the change it switched; and the page
        # counts the failed requests of the live window (none: the swap lost nothing).
        flipped = [worker for worker, seen in states.items() if len(seen) > 1]

        def swap_times() -> dict[str, float] | None:
            # Each row gets its time on its own refresh: wait for every row the page saw flip.
            times: dict[str, float] = browser.execute_script(_SWITCHED)
            return times if times and all(worker in times for worker in flipped) else None

        switched = wait_for(swap_times, what="the swap times of every worker that flipped")
        for worker in flipped:
            assert 0 <= switched[worker] <= 5.0, (worker, switched)
        summary = browser.find_element(By.CSS_SELECTOR, "#live .swap-summary")
        assert summary.get_attribute("data-failed-recently") == "0", summary.text
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert set(load.first_target) == {w["name"] for w in stack.text_workers()}, load.first_target
    swapped_at = max(load.first_target.values())
    lag = done_at - swapped_at
    print(f"console: every worker shown on 0.2.0 {lag:+.2f} s after the last swap; DOM states {states}")
    assert lag <= 2.0, f"the page showed the switch {lag:.2f} s after the last worker swapped"
    assert stack.deployment().routes == [pb.Route(version="0.2.0", weight=100)]
    screenshot(browser, "deployment")
    browser.get(stack.url + "/")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#live article.deployment"), what="the overview")
    screenshot(browser, "overview")
    # The registry audited the change as the token's holder: the console forwards the user's token.
    with stack.registry() as registry:
        events = registry.list_audit_events(
            pb.ListAuditEventsRequest(entity_id=DEPLOYMENT, page_size=5)
        ).events
    assert events and events[0].actor == "ops", [(e.action, e.actor) for e in events]


def test_compare_page_plots_the_stored_metrics(stack: Stack, browser: Any) -> None:
    log_in(browser, stack.url, stack.admin_token)
    browser.get(stack.url + "/compare")
    baseline, candidate = stack.runs["0.1.0"], stack.runs["0.2.0"]
    browser.find_element(By.CSS_SELECTOR, f"#baseline option[value='{baseline.run_id}']").click()
    browser.find_element(By.CSS_SELECTOR, f"#candidate option[value='{candidate.run_id}']").click()
    browser.find_element(By.ID, "compare-submit").click()
    wait_for(lambda: browser.find_elements(By.ID, "comparison"), what="the comparison")
    plotted = browser.execute_script(
        "return [...document.querySelectorAll('svg.chart rect.bar')].map(r => [r.closest('svg').id,"
        " r.dataset.metric, r.dataset.side, r.dataset.value, r.dataset.low || null, r.dataset.high || null]);"
    )
    stored = {("baseline", m.name): m.value for m in baseline.metrics} | {
        ("candidate", m.name): m.value for m in candidate.metrics
    }
    charts: dict[str, set[str]] = {}
    for chart, metric, side, value, low, high in plotted:
        assert float(value) == stored[(side, metric)], (chart, metric, side)
        charts.setdefault(chart, set()).add(metric)
        if chart == "chart-quality":
            assert low is not None and float(low) <= float(value) <= float(high), (metric, side, low, high)
    assert charts == {
        "chart-quality": {"recall@10", "ndcg@10"},
        "chart-latency": {"latency_p50_ms[c=1]", "latency_p95_ms[c=1]", "latency_p99_ms[c=1]"},
        "chart-throughput": {"throughput_rps[c=1]"},
    }
    # The table holds the benchmark service's comparison: deltas and winner per metric.
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#metric-table tr[data-metric]')].map(r => [r.dataset.metric,"
        " r.dataset.baseline, r.dataset.candidate, r.dataset.delta, r.dataset.winner, 'ciLow' in r.dataset]);"
    )
    table = {r[0]: r for r in rows}
    assert float(table["throughput_rps[c=1]"][3]) == pytest.approx(252.25 - 181.5)
    assert table["throughput_rps[c=1]"][4] == "candidate"
    assert table["recall@10"][5] is True, "quality deltas carry a 95% interval"
    assert browser.find_element(By.ID, "winner").text in ("baseline", "candidate", "tie", "mixed")
    screenshot(browser, "compare")

    # The catalog card of 0.1.0 shows its newest recall@10: the value of the run recorded above.
    browser.get(stack.url + "/catalog?" + urlencode({"model": MODEL, "q": "0.1.0"}))
    card = browser.find_element(By.CSS_SELECTOR, "#cards article.card[data-version='0.1.0']")
    recall = card.find_element(By.CSS_SELECTOR, ".newest-metric[data-metric='recall@10']")
    assert float(recall.get_attribute("data-value")) == stored[("baseline", "recall@10")]
    assert (recall.get_attribute("data-run-id"), recall.get_attribute("data-suite")) == (
        baseline.run_id,
        baseline.suite,
    )
    screenshot(browser, "catalog-metrics")
    # Its link opens the history chart, which plots both runs' values, in the order they were recorded.
    recall.find_element(By.CSS_SELECTOR, "a.history-link").click()
    wait_for(lambda: browser.find_elements(By.ID, "chart-history"), what="the history chart")
    points = browser.execute_script(
        "return [...document.querySelectorAll('#chart-history circle.point')].map(c => [c.dataset.runId,"
        " c.dataset.version, c.dataset.value, c.classList.contains('highlight')]);"
    )
    assert [(r, v, float(x), mark) for r, v, x, mark in points] == [
        (baseline.run_id, "0.1.0", stored[("baseline", "recall@10")], True),
        (candidate.run_id, "0.2.0", stored[("candidate", "recall@10")], False),
    ]
    screenshot(browser, "history-chart")


def test_readers_forgers_and_incompatible_switches_are_refused(stack: Stack, browser: Any) -> None:
    before = stack.deployment()
    # A reader sees the deployment but no control, and the console refuses their POST (403).
    browser.delete_all_cookies()
    browser.get(stack.url + f"/deployments/{DEPLOYMENT}")
    wait_for(lambda: browser.find_elements(By.ID, "token"), what="the login page")
    screenshot(browser, "login")
    log_in(browser, stack.url, stack.reader_token)
    browser.get(stack.url + f"/deployments/{DEPLOYMENT}")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#live tr[data-worker]"), what="the workers")
    assert browser.find_element(By.ID, "user").get_attribute("data-role") == "reader"
    assert not browser.find_elements(By.ID, "actions")
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-switch]")
    actions = {f.get_attribute("action") for f in browser.find_elements(By.CSS_SELECTOR, "form[method=post]")}
    assert actions == {stack.url + "/logout"}, actions
    cookie, csrf = session_of(browser)
    status, body = post(stack.url + f"/deployments/{DEPLOYMENT}/rollback", {"csrf": csrf}, cookie)
    # Refused by the console itself, before any call (the registry would refuse it too).
    assert status == 403 and "logged in with a reader token, which may not change anything" in body
    status, body = post(
        stack.url + f"/deployments/{DEPLOYMENT}/switch", {"csrf": csrf, "version": "0.1.0"}, cookie
    )
    assert status == 403 and "logged in with a reader token" in body
    # Without (or with a wrong) CSRF token even an admin's POST is refused.
    log_in(browser, stack.url, stack.admin_token)
    browser.get(stack.url + f"/deployments/{DEPLOYMENT}")
    cookie, csrf = session_of(browser)
    for fields in ({}, {"csrf": "forged"}):
        status, body = post(stack.url + f"/deployments/{DEPLOYMENT}/rollback", fields, cookie)
        assert status == 403 and "CSRF" in body, (fields, status)
    # A session cookie from elsewhere is no session: the login page.
    status, body = get(stack.url + "/", "modelyard_console=forged")
    assert status == 200 and 'id="token"' in body
    assert stack.deployment().revision == before.revision, "nothing changed"

    # An incompatible switch shows the check and is refused until acknowledged.
    browser.get(stack.url + f"/deployments/{DEPLOYMENT}/switch?version=0.3.0")
    compat = browser.find_element(By.ID, "compatibility")
    assert compat.get_attribute("data-compatible") == "false"
    assert any("48" in d.text for d in browser.find_elements(By.CSS_SELECTOR, "#compatibility .difference"))
    screenshot(browser, "switch-incompatible")
    browser.find_element(By.ID, "confirm-switch").click()
    error = wait_for(lambda: browser.find_elements(By.ID, "switch-error"), what="the refusal")[0]
    assert "acknowledg" in error.text
    status, _ = post(
        stack.url + f"/deployments/{DEPLOYMENT}/switch", {"csrf": csrf, "version": "0.3.0"}, cookie
    )
    assert status == 409
    assert stack.deployment().revision == before.revision, "refused: nothing changed"
    browser.find_element(By.ID, "acknowledge").click()
    browser.find_element(By.ID, "confirm-switch").click()
    wait_for(lambda: browser.find_elements(By.ID, "switched"), what="the switched deployment")
    assert stack.deployment().routes == [pb.Route(version="0.3.0", weight=100)]


def test_history_is_filtered_and_paged(stack: Stack, browser: Any) -> None:
    log_in(browser, stack.url, stack.admin_token)
    browser.get(stack.url + f"/history?entity_id={DEPLOYMENT}")
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#audit tr[data-event]')].map(r => [r.dataset.entity, r.dataset.actor]);"
    )
    assert rows and all(entity.endswith(f":{DEPLOYMENT}") for entity, _ in rows), rows
    assert rows[0][1] == "ops", "the console's last change is audited under the admin token's name"
    browser.get(stack.url + "/history")
    first = [
        e.get_attribute("data-event") for e in browser.find_elements(By.CSS_SELECTOR, "#audit tr[data-event]")
    ]
    assert len(first) == PAGE_SIZE
    browser.find_element(By.ID, "next-page").click()
    wait_for(lambda: browser.find_element(By.ID, "page-info").get_attribute("data-page") == "2")
    second = [
        e.get_attribute("data-event") for e in browser.find_elements(By.CSS_SELECTOR, "#audit tr[data-event]")
    ]
    assert second and max(int(i) for i in second) < min(int(i) for i in first)
    browser.find_element(By.ID, "previous-page").click()
    wait_for(lambda: browser.find_element(By.ID, "page-info").get_attribute("data-page") == "1")
    assert [
        e.get_attribute("data-event") for e in browser.find_elements(By.CSS_SELECTOR, "#audit tr[data-event]")
    ] == first
    screenshot(browser, "history")


def test_canary_weight_and_one_click_rollback(stack: Stack, browser: Any) -> None:
    log_in(browser, stack.url, stack.admin_token)
    before = stack.deployment()
    assert before.routes == [pb.Route(version="0.3.0", weight=100)]  # where the previous test left it
    browser.get(stack.url + f"/deployments/{DEPLOYMENT}")
    browser.find_element(By.CSS_SELECTOR, "#canary-stable option[value='0.3.0']").click()
    browser.find_element(By.CSS_SELECTOR, "#canary-candidate option[value='0.2.0']").click()
    weight = browser.find_element(By.ID, "canary-weight")
    weight.clear()
    weight.send_keys("25")
    # 0.2.0 has the old 32-dim signature: refused until acknowledged, with the registry's reason.
    browser.find_element(By.ID, "canary-submit").click()
    error = wait_for(lambda: browser.find_elements(By.ID, "action-error"), what="the refusal")[0]
    assert "acknowledge" in error.text.lower() or "signature" in error.text.lower(), error.text
    assert stack.deployment().revision == before.revision
    browser.find_element(By.CSS_SELECTOR, "#canary-form input[name=acknowledge_incompatible]").click()
    browser.find_element(By.ID, "canary-submit").click()
    wait_for(lambda: browser.find_elements(By.ID, "switched"), what="the canary set")
    assert list(stack.deployment().routes) == [
        pb.Route(version="0.3.0", weight=75),
        pb.Route(version="0.2.0", weight=25),
    ]
    wait_for(
        lambda: browser.find_elements(
            By.CSS_SELECTOR, "#live .route[data-version='0.2.0'][data-weight='25']"
        ),
        what="the live routes",
    )
    browser.find_element(By.ID, "rollback").click()
    wait_for(lambda: "switched=rollback" in browser.current_url, what="the rollback")
    assert list(stack.deployment().routes) == [pb.Route(version="0.3.0", weight=100)]


def _workers(stack: Stack) -> dict[str, str]:
    return {w["name"]: w["address"] for w in stack.text_workers()}
