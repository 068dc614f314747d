"""The console's Register page against `modelyard up --tiny-text` as users deploy it (admin and reader
tokens, MODELYARD_CONSOLE_IMPORT_ROOTS set), in a real headless Chromium: an admin imports a model
directory and finds it in the catalog with the hash and signature the registry stores; each refusal
shows next to its field with its status; a reader gets no form and a forged POST gets 403."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from console_support import chromium, get, log_in, post, screenshot, session_of, wait_for
from selenium.webdriver.common.by import By
from up_support import modelyard_up

from modelyard.api import registry_pb2 as pb
from modelyard.client.sync import RegistryClient
from modelyard.common.auth import new_token
from modelyard.common.errors import NotFound

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
MODEL = "tiny-text"  # seeded by `up --tiny-text` as 0.1.0


@dataclass
class Stack:
    up: subprocess.Popen[str]
    root: Path
    imports: Path
    registry_address: str
    admin_token: str
    reader_token: str
    url: str

    def version(self, version: str) -> pb.ModelVersion:
        with RegistryClient(self.registry_address, token=self.admin_token) as registry:
            return registry.get_version(pb.GetVersionRequest(model_id=MODEL, version=version))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="modelyard-register-"))
    root.chmod(0o755)  # the embedded PostgreSQL may run as an unprivileged user
    imports = root / "imports"
    imports.mkdir()
    admin_token, reader_token = new_token(), new_token()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "MODELYARD_ARTIFACT_STORE": str(root / "artifacts"),
        "MODELYARD_CONSOLE_IMPORT_ROOTS": str(imports),
        "MODELYARD_ADMIN_TOKENS": f"ops:{admin_token}",
        "MODELYARD_READER_TOKENS": f"dash:{reader_token}",
    }
    try:
        with modelyard_up(root, env, "--tiny-text") as running:
            state = running.state
            yield Stack(
                running.process,
                root,
                imports,
                state["registry"]["address"],
                admin_token,
                reader_token,
                url=state["console"]["url"].rstrip("/"),
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def _fill(browser: Any, stack: Stack, **fields: str) -> None:
    """Open the Register page from the nav, type `fields` into their inputs, submit."""
    browser.get(stack.url + "/catalog")
    browser.find_element(By.ID, "nav-register").click()
    wait_for(lambda: browser.find_elements(By.ID, "register-form"), what="the register form")
    for name, value in fields.items():
        element = browser.find_element(By.ID, name)
        if element.tag_name == "select":
            element.find_element(By.CSS_SELECTOR, f"option[value='{value}']").click()
        else:
            element.clear()
            element.send_keys(value)
    browser.find_element(By.ID, "register-submit").click()


def _field_error(browser: Any, field: str) -> str:
    """The one error on the page, which must sit in `field`'s own block, next to its input."""
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".field-error"), timeout=60, what="an error")
    errors = browser.find_elements(By.CSS_SELECTOR, ".field-error")
    holders = [e.find_element(By.XPATH, "..").get_attribute("data-field") for e in errors]
    assert holders == [field], holders
    block = browser.find_element(By.CSS_SELECTOR, f"[data-field={field}]")
    assert block.find_element(By.ID, field).get_attribute("aria-invalid") == "true"
    return str(block.find_element(By.CSS_SELECTOR, ".field-error").text)


def test_an_admin_imports_a_directory_and_finds_it_in_the_catalog(stack: Stack, browser: Any) -> None:
    from modelyard.inference.artifacts import checkpoint_hash
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    model = build_tiny_sentence_transformer(stack.imports / "tiny-wide", seed=5, hidden=48)
    log_in(browser, stack.url, stack.admin_token)
    _fill(
        browser,
        stack,
        model_id=MODEL,
        version="0.4.0",
        source=str(model),
        description="imported in the browser",
        parent_version="0.1.0",
        tags="team=search\nsource=console",
    )
    wait_for(lambda: "/catalog?" in browser.current_url, timeout=120, what="the catalog after the import")
    assert browser.current_url == f"{stack.url}/catalog?model={MODEL}&q=0.4.0"
    (card,) = browser.find_elements(By.CSS_SELECTOR, "#cards article.card")
    assert (card.get_attribute("data-model"), card.get_attribute("data-version")) == (MODEL, "0.4.0")
    stored = stack.version("0.4.0")
    assert stored.checkpoint_hash == checkpoint_hash(model), "the registry has what the directory hashes to"
    shown = card.find_element(By.CSS_SELECTOR, "[data-field=checkpoint]")
    assert shown.get_attribute("title") == stored.checkpoint_hash
    assert shown.text == stored.checkpoint_hash[:12]
    assert stored.signature.embedding_dim == 48
    assert card.find_element(By.CSS_SELECTOR, "[data-field=embedding-dim]").text == "48-dim"
    assert stored.source_uri == f"file://{stack.root / 'artifacts'}/{stored.checkpoint_hash}"
    assert (stored.lineage.parent_version, dict(stored.tags)) == (
        "0.1.0",
        {"team": "search", "source": "console"},
    )
    assert stored.created_by == "ops", "registered as the admin who clicked, not as the console"


def test_each_refusal_shows_next_to_its_field_with_its_status(stack: Stack, browser: Any) -> None:
    outside = stack.root / "outside-model"
    outside.mkdir(exist_ok=True)
    (outside / "modules.json").write_text("[]")
    (stack.imports / "escape").unlink(missing_ok=True)
    (stack.imports / "escape").symlink_to(outside)
    not_a_model = stack.imports / "notes"
    not_a_model.mkdir(exist_ok=True)
    (not_a_model / "README.txt").write_text("just notes")
    valid = stack.imports / "tiny-wide"  # imported by the test before, or built here when run alone
    if not valid.exists():
        from modelyard.inference.tiny_models import build_tiny_sentence_transformer

        build_tiny_sentence_transformer(valid, seed=5, hidden=48)

    log_in(browser, stack.url, stack.admin_token)
    cases = [
        ({"model_id": "", "version": "0.5.0", "source": str(valid)}, "model_id", 400, "give the model id"),
        ({"model_id": MODEL, "version": "0.1.0", "source": str(valid)}, "version", 409, "already registered"),
        ({"model_id": MODEL, "version": "0.5.0", "source": str(outside)}, "source", 400, "outside the import roots"),
        (
            {"model_id": MODEL, "version": "0.5.0", "source": f"{stack.imports}/../outside-model"},
            "source", 400, "outside the import roots",
        ),
        (
            {"model_id": MODEL, "version": "0.5.0", "source": str(stack.imports / "escape")},
            "source", 400, f"(it leads to {outside.resolve()})",
        ),
        ({"model_id": MODEL, "version": "0.5.0", "source": str(not_a_model)}, "source", 400, "not a model directory"),
    ]  # fmt: skip
    for fields, field, status, expected in cases:
        _fill(browser, stack, **fields)
        message = _field_error(browser, field)
        assert expected in message, (fields, message)
        # What was typed is still there to correct.
        assert browser.find_element(By.ID, "source").get_attribute("value") == fields["source"]
        if field == "source" and "outside" in expected:
            screenshot(browser, "register")
        cookie, csrf = session_of(browser)
        got, body = post(stack.url + "/register", {"csrf": csrf, **fields}, cookie)
        assert got == status and 'id="' + field + '-error"' in body, (fields, got)
        assert "Traceback" not in body
    with pytest.raises(NotFound):
        stack.version("0.5.0")


def test_a_reader_gets_no_form_and_a_forged_post_is_refused(stack: Stack, browser: Any) -> None:
    valid = stack.imports / "tiny-wide"
    fields = {"model_id": MODEL, "version": "0.6.0", "source": str(valid)}
    log_in(browser, stack.url, stack.reader_token)
    browser.get(stack.url + "/catalog")
    assert browser.find_element(By.ID, "user").get_attribute("data-role") == "reader"
    assert not browser.find_elements(By.ID, "nav-register")
    browser.get(stack.url + "/register")
    assert not browser.find_elements(By.ID, "register-form")
    assert "reader token" in browser.find_element(By.TAG_NAME, "main").text
    cookie, csrf = session_of(browser)
    status, body = get(stack.url + "/register", cookie)
    assert status == 403 and 'id="register-form"' not in body
    status, body = post(stack.url + "/register", {"csrf": csrf, **fields}, cookie)
    assert status == 403 and "logged in with a reader token" in body
    # An admin's session without its CSRF token (a form from another site): refused too.
    log_in(browser, stack.url, stack.admin_token)
    cookie, _ = session_of(browser)
    for forged in ({}, {"csrf": "forged"}):
        status, body = post(stack.url + "/register", {**forged, **fields}, cookie)
        assert status == 403 and "CSRF" in body, (forged, status)
    with pytest.raises(NotFound):
        stack.version("0.6.0")
