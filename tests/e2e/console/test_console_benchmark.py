"""The console's Benchmark page against `modelyard up` with admin and reader tokens, in a real
headless Chromium: an admin starts a run of two versions (one staged) from the form and watches it
progress without a reload to the metrics the benchmark service stored; bad input is shown next to
its field and starts nothing; readers, forgers and CSRF-less posts are refused. Plus the banner
when the benchmark service does not answer (a real registry, the console pointed at a dead port)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from console_support import chromium, cookie_header, get, log_in, post, screenshot, session_of, wait_for
from selenium.webdriver.common.by import By
from support import ServerProcess, free_port, spawn_registry
from up_support import modelyard_up

from modelyard.api import benchmark_pb2 as bpb
from modelyard.api import registry_pb2 as pb
from modelyard.client.sync import BenchmarkClient, RegistryClient
from modelyard.common.auth import new_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
DEPLOYMENT = "text-embedding"
MODEL = "tiny-text"


@dataclass
class Stack:
    up: subprocess.Popen[str]
    state: dict[str, Any]
    env: dict[str, str]
    root: Path
    admin_token: str
    reader_token: str
    url: str

    def benchmark(self) -> BenchmarkClient:
        return BenchmarkClient(self.state["benchmark"]["address"], token=self.admin_token)

    def registry(self) -> RegistryClient:
        return RegistryClient(self.state["registry"]["address"], token=self.admin_token)

    def run_ids(self) -> set[str]:
        with self.benchmark() as bench:
            return {r.run_id for r in bench.list_runs(bpb.ListRunsRequest(page_size=200)).runs}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="modelyard-console-bench-"))
    root.chmod(0o755)  # the embedded PostgreSQL may run as an unprivileged user
    admin_token, reader_token = new_token(), new_token()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "MODELYARD_ARTIFACT_STORE": str(root / "artifacts"),
        "MODELYARD_ADMIN_TOKENS": f"ops:{admin_token}",
        "MODELYARD_READER_TOKENS": f"dash:{reader_token}",
    }
    try:
        with modelyard_up(root, env, "--tiny-text", "--text-workers", "1") as running:
            state = running.state
            for name in ("MODELYARD_ADMIN_TOKENS", "MODELYARD_READER_TOKENS"):
                del env[name]
            env.update(
                MODELYARD_REGISTRY_ADDRESS=state["registry"]["address"],
                MODELYARD_BENCHMARK_ADDRESS=state["benchmark"]["address"],
                MODELYARD_TOKEN=admin_token,
            )
            url = state["console"]["url"].rstrip("/")
            stack = Stack(running.process, state, env, root, admin_token, reader_token, url)
            _register_second_version(stack)
            yield stack
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _register_second_version(stack: Stack) -> None:
    """0.2.0, another tiny model no route serves: the run stages it."""
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    other = build_tiny_sentence_transformer(stack.root / "tiny-b", seed=1)
    done = subprocess.run(
        [
            sys.executable, "-m", "modelyard.cli.main", "models", "import", str(other), "--model", MODEL,
            "--version", "0.2.0", "--description", "retrained",
        ],
        env=stack.env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    with chromium() as driver:
        yield driver


# Every replacement of the live region, as the page's own script applies it: one entry per SSE
# event the browser received after this was installed.
_OBSERVE = """
const live = document.getElementById('live');
const seen = window.__states = [];
const note = () => {
  const job = live.querySelector('#job');
  if (!job) return;
  seen.push({revision: Number(job.dataset.revision), status: job.dataset.status,
    versions: [...job.querySelectorAll('.job-version')].map(v => [v.dataset.version, v.dataset.phase, Number(v.dataset.fraction)])});
};
note();
new MutationObserver(note).observe(live, {childList: true});
window.__sameDocument = true;
"""


def test_an_admin_starts_a_run_and_watches_it_progress_to_the_stored_metrics(
    stack: Stack, browser: Any
) -> None:
    before = stack.run_ids()
    log_in(browser, stack.url, stack.admin_token)
    browser.get(stack.url + "/benchmarks")
    browser.find_element(By.CSS_SELECTOR, f"#pick-deployment option[value='{DEPLOYMENT}']").click()
    # The picker submits itself on change (console.js): the form now lists tiny-text's versions.
    wait_for(lambda: browser.find_elements(By.ID, "version-0.2.0"), what="the versions of tiny-text")
    assert browser.find_element(By.ID, "version-0.1.0").is_selected(), "routed versions are pre-ticked"
    assert not browser.find_element(By.ID, "version-0.2.0").is_selected()
    browser.find_element(By.ID, "version-0.2.0").click()
    browser.find_element(By.ID, "stage_unrouted").click()
    browser.find_element(By.CSS_SELECTOR, "#suite option[value='stdlib-docstrings']").click()
    for name, value in (("limit", "40"), ("batch_size", "4")):
        box = browser.find_element(By.ID, name)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "start-run").click()
    wait_for(lambda: "/benchmarks/" in browser.current_url, what="the run's page")
    browser.execute_script(_OBSERVE)
    status = wait_for(
        lambda: (
            (browser.find_element(By.ID, "job").get_attribute("data-status") or "running") != "running"
            and browser.find_element(By.ID, "job").get_attribute("data-status")
        ),
        timeout=180,
        interval=0.2,
        what="the run to finish",
    )
    assert status == "succeeded", browser.find_element(By.ID, "job").text
    assert browser.execute_script("return window.__sameDocument === true;"), "the page was reloaded"
    states = browser.execute_script("return window.__states;")
    revisions = [s["revision"] for s in states]
    # The stream opens with the state the page was rendered with, then relays every change in order.
    assert revisions == sorted(revisions), revisions
    assert sorted(set(revisions)) == list(range(revisions[0], revisions[-1] + 1)), (
        f"a change went missing: {revisions}"
    )
    distinct = {json.dumps(s["versions"]) for s in states}
    assert len(distinct) >= 2, states
    # Progress a user sees: a version part-way through the suite, before the end.
    assert any(
        phase == "quality" and 0 < fraction < 1 for s in states for _, phase, fraction in s["versions"]
    ), states
    assert states[-1]["status"] == "succeeded"
    print(f"console: {len(states)} live updates seen, revisions {revisions[0]}..{revisions[-1]}")

    # What the page shows is what the benchmark service stored.
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#job .job-version')].map(v => [v.dataset.version, v.dataset.runId,"
        " Object.fromEntries([...v.querySelectorAll('tr[data-metric]')].map(r => [r.dataset.metric, r.dataset.value]))]);"
    )
    assert [version for version, _, _ in shown] == ["0.1.0", "0.2.0"]
    with stack.benchmark() as bench:
        for version, run_id, metrics in shown:
            stored = bench.get_run(bpb.GetRunRequest(run_id=run_id, without_samples=True))
            assert stored.version == version and stored.status == pb.RUN_STATUS_SUCCEEDED
            assert stored.suite == "stdlib-docstrings[limit=40]"
            assert stored.conditions["staged"] == ("true" if version == "0.2.0" else "false")
            assert {m.name: m.value for m in stored.metrics} == {k: float(v) for k, v in metrics.items()}
            assert "recall@10" in metrics
    assert stack.run_ids() - before == {run_id for _, run_id, _ in shown}
    screenshot(browser, "benchmark")

    # A reloaded page shows the run as it ended; the list links the runs to /compare.
    browser.refresh()
    # The live stream replaces #job as soon as it opens: read it through wait_for, which retries a
    # stale element instead of failing on it.
    wait_for(
        lambda: browser.find_element(By.ID, "job").get_attribute("data-status") == "succeeded",
        what="the reloaded run page to show the run succeeded",
    )
    browser.find_element(By.ID, "compare-link").click()
    comparison = wait_for(lambda: browser.find_elements(By.ID, "comparison"), what="the comparison")[0]
    assert comparison.get_attribute("data-baseline") == shown[0][1]
    assert comparison.get_attribute("data-candidate") == shown[1][1]
    browser.get(stack.url + "/benchmarks")
    listed = [
        r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "#run-table tr[data-run]")
    ]
    assert listed[:2] == [shown[1][1], shown[0][1]], "newest first"
    link = browser.find_element(By.CSS_SELECTOR, f"#run-table tr[data-run='{shown[1][1]}'] a.compare-link")
    assert link.get_attribute("href").endswith(f"/compare?baseline={shown[0][1]}&candidate={shown[1][1]}")


def _fields(csrf: str | None, **changes: str | None) -> dict[str, str]:
    """A start form as a script would post it; a change to None leaves that field out."""
    fields: dict[str, str | None] = {
        "csrf": csrf,
        "deployment": DEPLOYMENT,
        "versions": "0.1.0",
        "suite": "load",
        "concurrency": "1,2",
        "requests": "20",
        "warmup_requests": "2",
        "batch_size": "",
        "limit": "",
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


def test_bad_input_is_shown_next_to_its_field_with_400_and_starts_nothing(stack: Stack, browser: Any) -> None:
    log_in(browser, stack.url, stack.admin_token)
    runs = stack.run_ids()
    browser.get(stack.url + f"/benchmarks?deployment={DEPLOYMENT}")
    jobs = len(browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]"))
    # In the browser: no version ticked.
    for box in browser.find_elements(By.CSS_SELECTOR, "#versions input[name=versions]"):
        if box.is_selected():
            box.click()
    concurrency = browser.find_element(By.ID, "concurrency")
    concurrency.clear()
    concurrency.send_keys("4,0")
    browser.find_element(By.ID, "start-run").click()
    error = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#versions #error-versions"), what="the error"
    )
    assert "at least one version" in error[0].text
    shown = browser.find_element(By.CSS_SELECTOR, "#error-concurrency")
    assert "from 1 to" in shown.text
    assert browser.find_element(By.ID, "concurrency").get_attribute("value") == "4,0", "kept as typed"
    cookie, csrf = session_of(browser)
    cases = [
        (_fields(csrf, versions=None), "error-versions", "pick at least one version"),
        (_fields(csrf, concurrency="0"), "error-concurrency", "&#39;0&#39;"),
        (_fields(csrf, suite="no-such-suite"), "error-suite", "unknown suite &#39;no-such-suite&#39;"),
        (_fields(csrf, versions="0.2.0", suite="stdlib-docstrings"), "error-versions", "stage unrouted"),
    ]
    for fields, field_id, message in cases:
        status, body = post(stack.url + "/benchmarks", fields, cookie)
        assert status == 400, (fields, status)
        assert f'id="{field_id}"' in body and message in body, (field_id, body[-3000:])
        assert body.count('class="field-error"') == 1, "only the wrong field is flagged"
    # A form the console accepts but the benchmark service refuses (no worker serves the deployment):
    # its reason on the form, and nothing started.
    with stack.registry() as registry:
        registry.create_deployment(
            pb.CreateDeploymentRequest(
                name="idle", model_id=MODEL, routes=[pb.Route(version="0.1.0", weight=100)], reason="test"
            )
        )
    status, body = post(stack.url + "/benchmarks", _fields(csrf, deployment="idle"), cookie)
    assert status == 409 and 'id="start-error"' in body, (status, body[-2000:])
    assert "not started: no live worker serves deployment idle" in body
    browser.get(stack.url + "/benchmarks")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]")) == jobs, "no job started"
    assert stack.run_ids() == runs, "no run recorded"


def test_runs_go_on_with_no_page_open_and_at_most_two_at_once(stack: Stack, browser: Any) -> None:
    log_in(browser, stack.url, stack.admin_token)
    browser.get(stack.url + "/benchmarks")
    cookie, csrf = session_of(browser)
    # Long enough to still be going when the third start comes; no browser ever watches them.
    long_load = _fields(csrf, concurrency="1", requests="1500", warmup_requests="0")
    jobs = []
    for _ in range(2):
        status, location = _start(stack.url + "/benchmarks", long_load, cookie)
        assert status == 303 and location.startswith("/benchmarks/"), (status, location)
        jobs.append(location)
    status, body = post(stack.url + "/benchmarks", long_load, cookie)
    assert status == 409 and 'id="start-error"' in body and "at most 2 at once" in body, body[-2000:]
    # A page opened mid-run shows the progress so far.
    status, body = get(stack.url + jobs[0], cookie)
    assert status == 200 and 'data-status="running"' in body
    messages = int(body.split('data-messages="')[1].split('"')[0])
    assert messages >= 1, "the run's first message (starting) is already there"
    for job in jobs:
        wait_for(
            lambda job=job: 'data-status="succeeded"' in get(stack.url + job, cookie)[1],
            timeout=180,
            interval=0.5,
            what=f"{job} to finish",
        )
    status, body = get(stack.url + jobs[0], cookie)
    run_id = body.split('data-run-id="')[1].split('"')[0]
    with stack.benchmark() as bench:
        stored = bench.get_run(bpb.GetRunRequest(run_id=run_id, without_samples=True))
    assert stored.status == pb.RUN_STATUS_SUCCEEDED and stored.suite == "load"
    assert stored.conditions["requests"] == "1500" and stored.conditions["concurrency"] == "1"
    assert stored.created_by == "ops", "the run is the admin's, not the console's"


def _start(url: str, fields: dict[str, str], cookie: str) -> tuple[int, str]:
    """POST the start form as a script would: (status, the Location it redirects to)."""
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(fields).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
        method="POST",
    )

    class _Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    try:
        with urllib.request.build_opener(_Stay).open(request, timeout=60) as response:
            return response.status, ""
    except urllib.error.HTTPError as answer:
        return answer.code, answer.headers.get("Location", "")


def test_readers_see_runs_without_a_start_control_and_forged_posts_are_refused(
    stack: Stack, browser: Any
) -> None:
    runs = stack.run_ids()
    log_in(browser, stack.url, stack.reader_token)
    browser.get(stack.url + "/benchmarks")
    assert browser.find_element(By.ID, "user").get_attribute("data-role") == "reader"
    assert not browser.find_elements(By.ID, "start-form") and not browser.find_elements(By.ID, "start-run")
    assert browser.find_elements(By.ID, "reader-note")
    listed = {
        r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "#run-table tr[data-run]")
    }
    assert listed == runs, "a reader sees the stored runs"
    actions = {f.get_attribute("action") for f in browser.find_elements(By.CSS_SELECTOR, "form[method=post]")}
    assert actions == {stack.url + "/logout"}, actions
    # A job started by an admin can be watched by a reader.
    for job in browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]"):
        status, body = get(stack.url + f"/benchmarks/{job.get_attribute('data-job')}", cookie_header(browser))
        assert status == 200 and 'id="job"' in body
    cookie, csrf = session_of(browser)
    status, body = post(stack.url + "/benchmarks", _fields(csrf), cookie)
    assert status == 403 and "logged in with a reader token, which may not change anything" in body
    # An admin's post without (or with a wrong) CSRF token is refused before anything is called.
    log_in(browser, stack.url, stack.admin_token)
    browser.get(stack.url + "/benchmarks")
    cookie, csrf = session_of(browser)
    for token in (None, "forged"):
        status, body = post(stack.url + "/benchmarks", _fields(token), cookie)
        assert status == 403 and "CSRF" in body, (token, status)
    assert stack.run_ids() == runs, "nothing was started"


def test_an_unreachable_benchmark_service_shows_the_banner(database_url: str) -> None:
    registry = spawn_registry(database_url)
    dead = f"127.0.0.1:{free_port()}"
    console = ServerProcess(
        ["-m", "modelyard.console", "--port", "0", "--registry", registry.address, "--benchmark", dead,
         "--call-timeout-s", "2"],
        env={"MODELYARD_ADMIN_TOKENS": "", "MODELYARD_READER_TOKENS": ""},
    )  # fmt: skip
    try:
        url = f"http://{console.address}"
        status, body = get(url + "/benchmarks")
        assert status == 503, body[-2000:]
        assert f"benchmark service at {dead} is not reachable" in body
        assert 'data-retry-after-ms="' in body, "the page retries by itself"
        assert "Traceback" not in body
    finally:
        console.terminate()
        registry.kill()
