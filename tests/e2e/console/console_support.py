"""What the console's browser tests share: a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium), logging in, waiting on the DOM, screenshots for docs/, and
plain HTTP requests that act as a forger would (no browser, the cookie taken from one)."""

from __future__ import annotations

import os
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[3]
SCREENSHOTS = REPO / "docs" / "console"
INSTALL_HINT = "run `make tools` (deploy/tools/install-ci-tools.sh installs Debian's chromium, chromium-driver and libnss3-tools)"
T = TypeVar("T")


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@contextmanager
def chromium(*, home: Path | None = None) -> Iterator[Any]:
    """A headless Chromium; a missing browser or driver fails the test (never skips it): `make test`
    installs both, so their absence means the set-up is incomplete. `home` becomes the browser's
    HOME, whose `.pki/nssdb` holds the certificates it trusts beyond its built-in roots."""
    browser = _find("chromium", "chromium-browser")
    driver_path = _find("chromedriver")
    if browser is None or driver_path is None:
        pytest.fail(f"chromium and chromedriver are needed for the console's browser tests; {INSTALL_HINT}")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1360,1000",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    env = {**os.environ, "HOME": str(home)} if home is not None else None
    driver = webdriver.Chrome(service=Service(executable_path=driver_path, env=env), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """`check()`'s first truthy result; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # a stale element while a live region is replaced
            last_error = error
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            pytest.fail(f"timed out after {timeout:g} s waiting for {what or check}{detail}")
        time.sleep(interval)


def log_in(driver: Any, base_url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(base_url + "/login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-submit").click()
    wait_for(lambda: driver.find_elements(By.ID, "user"), what="the logged-in page")


def screenshot(driver: Any, name: str) -> Path:
    """A full-page PNG in docs/console/ (the README shows some of them)."""
    import base64

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1360, "height": min(max(height, 700), 2600), "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False}
        )
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path = SCREENSHOTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def cookie_header(driver: Any) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())


def session_of(driver: Any) -> tuple[str, str]:
    """(cookie header, CSRF token) of the browser's session, as a forger holding them would send."""
    from selenium.webdriver.common.by import By

    cookie = cookie_header(driver)
    csrf = driver.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    return cookie, csrf


def post(
    url: str, fields: dict[str, str], cookie: str = "", context: ssl.SSLContext | None = None
) -> tuple[int, str]:
    """A form POST without a browser: (status, body); no redirect is followed. `context` verifies
    an https console (e.g. against a private CA)."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(fields).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            **({"Cookie": cookie} if cookie else {}),
        },
        method="POST",
    )
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def get(url: str, cookie: str = "", context: ssl.SSLContext | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class WorkerLoad:
    """A backend calling each worker in `workers` ({name: address}) back to back with `token` and
    no client retries (so any failed request counts), `pause_s` between requests, noting when each
    worker first answered with `target`. `client_options` go to InferenceClient (e.g. TLS)."""

    def __init__(
        self,
        workers: dict[str, str],
        deployment: str,
        target: str,
        *,
        token: str,
        pause_s: float,
        **client_options: Any,
    ) -> None:
        self.deployment = deployment
        self.target = target
        self.token = token
        self.pause_s = pause_s
        self.client_options = client_options
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.first_target: dict[str, float] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(name, address), daemon=True)
            for name, address in workers.items()
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, name: str, address: str) -> None:
        from modelyard.client import ModelyardError
        from modelyard.client.sync import InferenceClient

        options = {"retry_attempts": 1, "timeout_s": 30, **self.client_options}
        with InferenceClient(address, token=self.token, **options) as worker:
            while not self._stop.is_set():
                try:
                    version = worker.embed_texts(self.deployment, ["hello world", "a red fox jumps"]).version
                    self.versions[version] += 1
                    if version == self.target and name not in self.first_target:
                        self.first_target[name] = time.monotonic()
                except ModelyardError as error:
                    self.failures.append(f"{name}: {error.code.name}: {error.message}")
                self._stop.wait(self.pause_s)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
