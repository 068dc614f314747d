"""The web console as users deploy it: `modelyard up --tls` with admin and reader tokens, so the
console serves HTTPS with the stack's certificate and reaches the registry over TLS with its CA.

The browser trusts that CA the way a user's would, not by ignoring certificate errors: an NSS
database in the browser's HOME holds the CA (`nss_trust`), and a browser without it is shown to
refuse the console. Everything else that talks to the stack (CLI, clients, forged POSTs) verifies
the console and the servers against the same CA. One stack and one browser for the module; tiny
text models (two text workers) keep it quick on two cores."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from console_support import WorkerLoad, chromium, get, log_in, post, session_of, wait_for
from nss_trust import home_trusting
from selenium.webdriver.common.by import By
from up_support import modelyard_up

from modelyard.api import registry_pb2 as pb
from modelyard.client.sync import RegistryClient
from modelyard.common.auth import new_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
DEPLOYMENT = "text-embedding"
MODEL = "tiny-text"
VERSIONS = ("0.1.0", "0.2.0")
CONSOLE_TLS_ERROR = "error: set both MODELYARD_TLS_CERT_FILE and MODELYARD_TLS_KEY_FILE, or neither"


@dataclass
class Stack:
    up: subprocess.Popen[str]
    state: dict[str, Any]
    env: dict[str, str]
    root: Path
    up_output: Path
    admin_token: str
    reader_token: str
    ca_file: Path
    url: str

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "modelyard.cli.main", *args],
            env=self.env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"modelyard {' '.join(args)} -> {done.returncode}\n{done.stderr}"
        return done.stdout

    def https(self) -> ssl.SSLContext:
        """How a user's tool verifies the console: the stack's CA, hostname checked."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def registry(self) -> RegistryClient:
        return RegistryClient(
            self.state["registry"]["address"], token=self.admin_token, tls=True, tls_ca_file=str(self.ca_file)
        )

    def deployment(self) -> pb.Deployment:
        with self.registry() as registry:
            return registry.get_deployment(pb.GetDeploymentRequest(name=DEPLOYMENT))

    def other_version(self) -> str:
        """The seeded version the deployment does not route to now (tests do not rely on order)."""
        (route,) = self.deployment().routes
        return next(v for v in VERSIONS if v != route.version)

    def text_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.state["workers"] if w["deployment"] == DEPLOYMENT]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="modelyard-console-tls-"))
    root.chmod(0o755)  # the embedded PostgreSQL may run as an unprivileged user
    admin_token, reader_token = new_token(), new_token()
    # `up` makes its own CA and certificate: none of the caller's TLS settings may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env.update(
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",  # the endpoints table prints each URL on one line
        MODELYARD_ARTIFACT_STORE=str(root / "artifacts"),
        MODELYARD_ADMIN_TOKENS=f"ops:{admin_token}",
        MODELYARD_READER_TOKENS=f"dash:{reader_token}",
    )
    try:
        with modelyard_up(
            root, env, "--tiny-text", "--text-workers", "2", "--tls", ready_text="modelyard is up"
        ) as running:
            state = running.state
            ca_file = Path(state["tls_ca_file"])
            for name in ("MODELYARD_ADMIN_TOKENS", "MODELYARD_READER_TOKENS"):
                del env[name]
            env.update(
                MODELYARD_REGISTRY_ADDRESS=state["registry"]["address"],
                MODELYARD_BENCHMARK_ADDRESS=state["benchmark"]["address"],
                MODELYARD_TOKEN=admin_token,
                MODELYARD_TLS="true",
                MODELYARD_TLS_CA_FILE=str(ca_file),
            )
            url = state["console"]["url"].rstrip("/")
            stack = Stack(
                running.process, state, env, root, running.log, admin_token, reader_token, ca_file, url
            )
            from modelyard.inference.tiny_models import build_tiny_sentence_transformer

            retrained = build_tiny_sentence_transformer(root / "tiny-b", seed=1)
            stack.cli("models", "import", str(retrained), "--model", MODEL, "--version", "0.2.0")
            yield stack
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    with chromium(home=home_trusting(stack.root / "browser-home", stack.ca_file)) as driver:
        yield driver


def test_console_refuses_a_certificate_without_its_key(tmp_path: Path) -> None:
    from modelyard.cli.stack_security import ensure_certificates

    files = ensure_certificates(tmp_path / "tls", "127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    for args, extra in (
        (["--tls-cert-file", str(files.cert_file)], {}),
        ([], {"MODELYARD_TLS_CERT_FILE": str(files.cert_file)}),
        ([], {"MODELYARD_TLS_KEY_FILE": str(files.key_file)}),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "modelyard.console", "--port", "0", *args],
            env={**env, **extra}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, (args, extra, done.returncode, done.stderr)
        assert done.stderr.strip().splitlines() == [CONSOLE_TLS_ERROR], (args, extra, done.stderr)


def test_up_serves_the_console_over_https_only_and_prints_its_url(stack: Stack) -> None:
    assert stack.url.startswith("https://127.0.0.1:"), stack.url
    printed = stack.up_output.read_text(encoding="utf-8")
    assert f"{stack.url}/" in printed, printed
    assert "TLS on, tokens on" in printed, printed
    status, body = get(stack.url + "/login", context=stack.https())
    assert status == 200 and 'id="token"' in body
    # The certificate is the stack's own: the system's roots do not vouch for it.
    with pytest.raises(urllib.error.URLError) as refused:
        get(stack.url + "/login")
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError), refused.value
    # Plain HTTP on the console's port gets no page, not even a redirect.
    where = urlsplit(stack.url)
    reply = b""
    with socket.create_connection((where.hostname, where.port), timeout=10) as plain:
        plain.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        try:
            while chunk := plain.recv(65536):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert not reply.startswith(b"HTTP/") and b"token" not in reply, reply[:200]


def test_login_over_https_sets_a_secure_httponly_strict_cookie(stack: Stack, browser: Any) -> None:
    log_in(browser, stack.url, stack.admin_token)
    assert browser.current_url.startswith("https://")
    assert browser.find_element(By.ID, "user").get_attribute("data-role") == "admin"
    (cookie,) = [c for c in browser.get_cookies() if c["name"] == "modelyard_console"]
    assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (True, True, "Strict"), cookie
    assert "modelyard_console" not in browser.execute_script("return document.cookie;")
    # Control: the same browser without the CA in its NSS database refuses the console.
    with chromium(home=stack.root / "untrusting-home") as untrusting:
        untrusting.get(stack.url + "/login")
        assert not untrusting.find_elements(By.ID, "token")
        assert "ERR_CERT_AUTHORITY_INVALID" in untrusting.page_source


_ROWS = (
    "return [...document.querySelectorAll(arguments[0] + ' tr[data-worker]')]"
    ".map(r => [r.dataset.worker, r.dataset.serving, r.dataset.converged]);"
)


def _watch_rows(
    browser: Any, scope: str, target: str, before: list[list[str]], timeout_s: float = 60
) -> tuple[float, dict[str, list[str]]]:
    """Poll the live region until every text worker's row serves `target`, converged, without a
    reload; returns when that happened and each row's sequence of `data-serving` values, starting
    from the rows read `before` the change."""
    states: dict[str, list[str]] = {worker: [serving] for worker, serving, _ in before}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = browser.execute_script(_ROWS, scope)
        for worker, serving, _ in rows:
            if not states.get(worker) or states[worker][-1] != serving:
                states.setdefault(worker, []).append(serving)
        if len(rows) == 2 and all(target in s.split() and c == "true" for _, s, c in rows):
            assert browser.execute_script("return window.__sameDocument === true;"), "the page was reloaded"
            return time.monotonic(), states
        time.sleep(0.05)
    pytest.fail(f"the live region never showed every worker on {target}: {states}")


def test_overview_live_region_follows_route_changes_over_tls(stack: Stack, browser: Any) -> None:
    log_in(browser, stack.url, stack.admin_token)
    target = stack.other_version()
    before = stack.deployment()
    scope = f"#live article.deployment[data-deployment='{DEPLOYMENT}']"
    browser.get(stack.url + "/")
    rows = wait_for(lambda: browser.execute_script(_ROWS, scope), what="the overview's worker rows")
    assert len(rows) == 2 and all(target not in serving.split() for _, serving, _ in rows), rows
    browser.execute_script("window.__sameDocument = true;")
    with stack.registry() as registry:
        registry.set_routes(
            pb.SetRoutesRequest(
                name=DEPLOYMENT, routes=[pb.Route(version=target, weight=100)], reason="console TLS test"
            )
        )
    changed_at = time.monotonic()
    # Polled from the moment of the change: workers swap within a second, faster than a wait for
    # the route alone would notice.
    done_at, states = _watch_rows(browser, scope, target, rows)
    print(
        f"console over TLS: overview showed every worker on {target} {done_at - changed_at:.2f} s after SetRoutes; {states}"
    )
    assert {worker for worker, _, _ in rows} == set(states), states
    assert browser.find_elements(
        By.CSS_SELECTOR, f"{scope} .route[data-version='{target}'][data-weight='100']"
    )
    revision = browser.find_element(By.CSS_SELECTOR, scope).get_attribute("data-revision")
    assert int(revision) > before.revision


def test_switch_clicked_over_https_fails_no_request_of_a_tls_load(stack: Stack, browser: Any) -> None:
    log_in(browser, stack.url, stack.admin_token)
    target = stack.other_version()
    scope = "#live"
    browser.get(stack.url + f"/deployments/{DEPLOYMENT}")
    rows = wait_for(lambda: browser.execute_script(_ROWS, scope), what="the worker rows")
    assert len(rows) == 2 and all(target not in serving.split() for _, serving, _ in rows), rows
    load = WorkerLoad(
        _workers(stack), DEPLOYMENT, target, token=stack.reader_token, pause_s=0.05,
        tls=True, tls_ca_file=str(stack.ca_file),
    )  # fmt: skip
    try:
        wait_for(lambda: sum(load.versions.values()) > 20, timeout=30, what="steady load over TLS")
        browser.find_element(By.ID, f"switch-{target}").click()
        compat = wait_for(lambda: browser.find_element(By.ID, "compatibility"), what="the confirmation")
        assert compat.get_attribute("data-compatible") == "true"
        browser.find_element(By.ID, "confirm-switch").click()
        wait_for(
            lambda: browser.find_elements(By.ID, "switched"), what="the deployment page after the switch"
        )
        browser.execute_script("window.__sameDocument = true;")
        done_at, states = _watch_rows(browser, scope, target, rows)
        time.sleep(0.5)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert set(load.first_target) == {w["name"] for w in stack.text_workers()}, load.first_target
    lag = done_at - max(load.first_target.values())
    print(
        f"console over TLS: {sum(load.versions.values())} requests {dict(load.versions)}, 0 failed; "
        f"every worker shown on {target} {lag:+.2f} s after the last swap; DOM states {states}"
    )
    assert lag <= 2.0, f"the page showed the switch {lag:.2f} s after the last worker swapped"
    assert stack.deployment().routes == [pb.Route(version=target, weight=100)]
    with stack.registry() as registry:
        events = registry.list_audit_events(
            pb.ListAuditEventsRequest(entity_id=DEPLOYMENT, page_size=1)
        ).events
    assert events and events[0].actor == "ops", [(e.action, e.actor) for e in events]


def test_reader_is_refused_a_forged_post_over_https(stack: Stack, browser: Any) -> None:
    before = stack.deployment()
    log_in(browser, stack.url, stack.reader_token)
    browser.get(stack.url + f"/deployments/{DEPLOYMENT}")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#live tr[data-worker]"), what="the workers")
    assert browser.find_element(By.ID, "user").get_attribute("data-role") == "reader"
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-switch]")
    cookie, csrf = session_of(browser)
    fields = {"csrf": csrf, "version": stack.other_version()}
    status, body = post(
        stack.url + f"/deployments/{DEPLOYMENT}/switch", fields, cookie, context=stack.https()
    )
    assert status == 403 and "logged in with a reader token, which may not change anything" in body, (
        status,
        body,
    )
    status, body = post(
        stack.url + f"/deployments/{DEPLOYMENT}/rollback", {"csrf": csrf}, cookie, context=stack.https()
    )
    assert status == 403 and "logged in with a reader token" in body, status
    assert stack.deployment().revision == before.revision, "nothing changed"


def _workers(stack: Stack) -> dict[str, str]:
    return {w["name"]: w["address"] for w in stack.text_workers()}
