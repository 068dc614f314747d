"""The Register page against a real registry, called over ASGI in the test's event loop (the registry
serves on that loop too), no browser: an import's slow part runs off the loop (other pages answer
while it loads), what it registers is what it measured, and a stored artifact registers in place.

The model is a fake loader registered like a real one (MLServer's fixtures style): its `load` waits
on a gate the test opens, so "the import is still running" is a fact, not a race."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from modelyard.api import registry_pb2 as pb
from modelyard.client import RegistryClient
from modelyard.common.modelspec import Signature, TensorSpec
from modelyard.console.app import create_app
from modelyard.console.sessions import COOKIE, Session, SessionCookies
from modelyard.console.settings import ConsoleSettings
from modelyard.inference.artifacts import checkpoint_hash
from modelyard.inference.loaders import ModelRuntime, register_loader
from modelyard.inference.loaders import base as loaders_base
from modelyard.registry.server import RegistryServer

SECRET = "register-test-secret"
CSRF = "csrf-of-this-test"


class GatedRuntime(ModelRuntime):
    """Loads once `gate` is open; says when a load has begun."""

    loader_name = "gated-test"
    gate = threading.Event()
    loading = threading.Event()

    def load(self) -> None:
        GatedRuntime.loading.set()
        assert GatedRuntime.gate.wait(60), "the test never opened the gate"

    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec("text", "BYTES", (-1,)),),
            outputs=(TensorSpec("embedding", "FP32", (-1, 8)),),
            embedding_dim=8,
        )

    def prepare(self, input_name: str, items: list[bytes]) -> list[Any]:
        return list(items)

    def predict(self, input_name: str, items: list[Any]) -> Any:
        raise NotImplementedError

    def warmup_items(self) -> dict[str, list[bytes]]:
        return {}

    def _release(self) -> None:
        return None


@pytest.fixture
def gated_loader() -> Iterator[type[GatedRuntime]]:
    GatedRuntime.gate.clear()
    GatedRuntime.loading.clear()
    register_loader(GatedRuntime)
    try:
        yield GatedRuntime
    finally:
        GatedRuntime.gate.set()
        loaders_base._LOADERS.pop(GatedRuntime.loader_name, None)


async def call(
    app: Any, method: str, path: str, fields: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """One request as the browser of a session with CSRF token CSRF sends it: (status, Location, body)."""
    body = urlencode({"csrf": CSRF, **(fields or {})}).encode() if method == "POST" else b""
    cookie = SessionCookies(SECRET, 3600).dump(Session(csrf=CSRF))
    route, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "headers": [
            (b"host", b"console.test"),
            (b"cookie", f"{COOKIE}={cookie}".encode()),
            (b"content-type", b"application/x-www-form-urlencoded"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("console.test", 80),
    }
    received = False
    status, location, chunks = 0, "", bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, location
        if message["type"] == "http.response.start":
            status = message["status"]
            location = dict(message["headers"]).get(b"location", b"").decode()
        elif message["type"] == "http.response.body":
            chunks.extend(message.get("body", b""))

    await app(scope, receive, send)
    return status, location, chunks.decode()


def _model(root: Path) -> Path:
    model = root / "imports" / "gated"
    model.mkdir(parents=True)
    (model / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (model / "nested").mkdir()
    (model / "nested" / "config.json").write_text('{"dim": 8}')
    return model


async def test_an_import_runs_off_the_loop_and_registers_what_it_measured(
    registry: RegistryServer,
    gated_loader: type[GatedRuntime],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "store"
    monkeypatch.setenv("MODELYARD_ARTIFACT_STORE", str(store))
    model = _model(tmp_path)
    app = create_app(
        ConsoleSettings(
            registry=registry.address,
            benchmark="127.0.0.1:1",
            import_roots=str(tmp_path / "imports"),
            session_secret=SECRET,
        )
    )
    form = {"model_id": "gated", "version": "1.0.0", "source": str(model), "loader": "gated-test"}
    try:
        importing = asyncio.create_task(call(app, "POST", "/register", {**form, "tags": "team=search"}))
        while not gated_loader.loading.is_set():
            assert not importing.done(), await importing
            await asyncio.sleep(0.02)
        # The import is inside the model's load: other pages answer meanwhile.
        status, _, page = await asyncio.wait_for(call(app, "GET", "/register?model=gated"), 10)
        assert status == 200 and 'value="gated"' in page
        assert (await asyncio.wait_for(call(app, "GET", "/catalog"), 10))[0] == 200
        assert not importing.done()
        gated_loader.gate.set()
        status, location, body = await asyncio.wait_for(importing, 60)
        assert (status, location) == (303, "/catalog?model=gated&q=1.0.0"), body

        async with RegistryClient(registry.address) as client:
            stored = await client.get_version(pb.GetVersionRequest(model_id="gated", version="1.0.0"))
            created = await client.get_model(pb.GetModelRequest(model_id="gated"))
        checkpoint = checkpoint_hash(model)
        assert stored.checkpoint_hash == checkpoint
        assert stored.source_uri == f"file://{store}/{checkpoint}"
        assert checkpoint_hash(store / checkpoint) == checkpoint, "the store holds the same bytes"
        assert stored.signature.embedding_dim == 8 and stored.loader == "gated-test"
        assert dict(stored.tags) == {"team": "search"}
        assert created.model_type == pb.TEXT_EMBEDDING

        # The same version again: refused before any work, next to the version field.
        status, _, page = await call(app, "POST", "/register", form)
        assert status == 409
        assert 'id="version-error"' in page and "already registered" in page

        # The stored copy, registered in place as another version (hashed and loaded where it lies).
        stored_form = {"model_id": "gated", "version": "1.1.0", "artifact_uri": stored.source_uri}
        status, location, body = await call(app, "POST", "/register", {**stored_form, "loader": "gated-test"})
        assert (status, location) == (303, "/catalog?model=gated&q=1.1.0"), body
        async with RegistryClient(registry.address) as client:
            again = await client.get_version(pb.GetVersionRequest(model_id="gated", version="1.1.0"))
        assert (again.source_uri, again.checkpoint_hash) == (stored.source_uri, checkpoint)

        # A stored artifact must lie under the artifact roots; the model directory is not stored.
        status, _, page = await call(app, "POST", "/register", {**stored_form, "artifact_uri": "file:///etc"})
        assert status == 400 and 'id="artifact_uri-error"' in page and "outside the artifact roots" in page
    finally:
        await app.state.console.backends.close()


async def test_a_store_the_registry_would_refuse_is_said_before_any_copy(
    registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_ARTIFACT_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MODELYARD_ARTIFACT_ROOTS", "file:///srv/elsewhere/")
    model = _model(tmp_path)
    app = create_app(
        ConsoleSettings(
            registry=registry.address,
            benchmark="127.0.0.1:1",
            import_roots=str(tmp_path / "imports"),
            session_secret=SECRET,
        )
    )
    try:
        status, _, page = await call(
            app, "POST", "/register", {"model_id": "gated", "version": "1.0.0", "source": str(model)}
        )
    finally:
        await app.state.console.backends.close()
    assert status == 409 and 'id="form-error"' in page and "outside the artifact roots" in page
    assert not (tmp_path / "store").exists(), "nothing was copied"
