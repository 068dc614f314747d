"""The console while the registry goes away and comes back: a banner instead of a traceback or a
blank 500, and pages that recover by themselves (the live overview over SSE, and a page rendered
during the outage, which reloads itself). A real registry process on a real PostgreSQL, the console
as its own process with tokens on, a real headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from console_support import chromium, cookie_header, get, log_in, screenshot, wait_for
from selenium.webdriver.common.by import By
from support import ServerProcess, free_port, spawn_registry

from modelyard.api import registry_pb2 as pb
from modelyard.client.sync import RegistryClient
from modelyard.common.auth import new_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ADMIN = new_token()


def _seed(address: str) -> None:
    with RegistryClient(address, token=ADMIN) as registry:
        registry.register_version(
            pb.RegisterVersionRequest(
                version=pb.ModelVersion(
                    model_id="minilm",
                    version="1.0.0",
                    source_uri="file:///models/minilm",
                    checkpoint_hash="ab" * 32,
                    loader="sentence-transformers",
                    signature=pb.Signature(embedding_dim=384),
                ),
                create_model=True,
                model_type=pb.TEXT_EMBEDDING,
            )
        )
        registry.create_deployment(
            pb.CreateDeploymentRequest(
                name="text", model_id="minilm", routes=[pb.Route(version="1.0.0", weight=100)]
            )
        )


@pytest.fixture
def services(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("MODELYARD_ADMIN_TOKENS", f"ops:{ADMIN}")
    port = free_port()
    registry = spawn_registry(database_url, port=port)
    _seed(registry.address)
    console = ServerProcess(
        [
            "-m", "modelyard.console", "--port", "0", "--registry", registry.address,
            "--benchmark", f"127.0.0.1:{free_port()}", "--call-timeout-s", "2", "--live-interval-s", "0.3",
        ]
    )  # fmt: skip
    state: dict[str, Any] = {
        "registry": registry,
        "console": console,
        "port": port,
        "database_url": database_url,
    }
    try:
        yield state
    finally:
        print("console log (pytest shows it when the test fails):\n" + console.log()[-6000:])
        console.terminate()
        state["registry"].kill()


def test_registry_outage_shows_a_banner_and_the_pages_recover(services: dict[str, Any]) -> None:
    url = f"http://{services['console'].address}"
    banner_text = "return document.getElementById('banner').hidden ? '' : document.getElementById('banner').textContent;"
    with chromium() as browser:
        log_in(browser, url, ADMIN)
        cookie = browser.get_cookie("modelyard_console")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict", cookie
        assert ADMIN not in cookie["value"], "the cookie carries the token encrypted"
        browser.get(url + "/")
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#live article[data-deployment=text]"))
        assert browser.execute_script(banner_text) == ""
        browser.execute_script("window.__sameDocument = true;")

        services["registry"].terminate()
        shown = wait_for(lambda: browser.execute_script(banner_text), timeout=20, what="the outage banner")
        assert "registry" in shown and "not reachable" in shown, shown
        screenshot(browser, "outage")
        # Any other page: the banner too, never a traceback or a blank 500.
        status, body = get(url + "/catalog", cookie_header(browser))
        assert status == 503 and "not reachable" in body and "Traceback" not in body
        second = browser.window_handles[0]
        browser.switch_to.new_window("tab")
        browser.get(url + "/catalog")
        assert "not reachable" in browser.execute_script(banner_text)

        services["registry"] = spawn_registry(services["database_url"], port=services["port"])
        # The catalog tab reloads itself until the registry answers...
        wait_for(
            lambda: browser.find_elements(By.ID, "cards"), timeout=30, what="the catalog after the outage"
        )
        assert browser.execute_script(banner_text) == ""
        # ...and the live overview recovers over its event stream, without a reload.
        browser.switch_to.window(second)
        wait_for(lambda: browser.execute_script(banner_text) == "", timeout=30, what="the banner to clear")
        assert browser.find_elements(By.CSS_SELECTOR, "#live article[data-deployment=text]")
        assert browser.execute_script("return window.__sameDocument === true;"), "the overview was reloaded"
