"""A server reachable beyond this machine without TLS says so at start; loopback ones do not."""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from typing import Any

import pytest

from modelyard.common.auth import AccessPolicy
from modelyard.common.server import GrpcServer, is_loopback
from modelyard.common.settings import ServerSettings


def _bind(host: str, **settings: Any) -> GrpcServer:
    return GrpcServer(
        ServerSettings(host=host, port=0, metrics_port=None, **settings),
        component="test",
        service_names=[],
        register=lambda server: None,
        policy=AccessPolicy({}),
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "server.plaintext"]


async def test_public_plaintext_bind_warns_and_names_the_tokens(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="modelyard.server"):
        await _bind("0.0.0.0", admin_tokens="ops:x").server.stop(None)
    (record,) = _warnings(caplog)
    assert record.levelno == logging.WARNING
    detail = record.fields["detail"]  # type: ignore[attr-defined]
    assert "bearer tokens" in detail and "MODELYARD_TLS_CERT_FILE" in detail


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
async def test_loopback_bind_is_quiet(caplog: pytest.LogCaptureFixture, host: str) -> None:
    with caplog.at_level(logging.WARNING, logger="modelyard.server"):
        await _bind(host).server.stop(None)
    assert _warnings(caplog) == []


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.5") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("my-host")


async def test_metrics_port_answers_health_probes_with_the_grpc_serving_state() -> None:
    """Kubernetes' gRPC probe cannot speak TLS; /readyz on the metrics port follows gRPC health."""
    server = GrpcServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=0),
        component="test",
        service_names=[],
        register=lambda server: None,
        policy=AccessPolicy({}),
    )
    await server.start()
    assert server.metrics is not None
    base = f"http://127.0.0.1:{server.metrics.port}"

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            return error.code, b""

    def status(path: str) -> int:
        return get(path)[0]

    try:
        assert status("/livez") == 200 and status("/readyz") == 503
        await server.set_serving(True)
        assert status("/readyz") == 200
        assert b"modelyard_rpc_duration_seconds" in get("/metrics")[1]
    finally:
        await server.stop()


async def test_health_watch_streams_through_the_interceptors() -> None:
    """grpc.health's Watch writes with context.write() instead of yielding; it used to be INTERNAL."""
    from grpc import aio
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = _bind("127.0.0.1")
    await server.start()
    await server.set_serving(False)
    try:
        async with aio.insecure_channel(server.address) as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            first = await asyncio.wait_for(call.read(), 5)
            assert first.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await server.set_serving(True)
            second = await asyncio.wait_for(call.read(), 5)
            assert second.status == health_pb2.HealthCheckResponse.SERVING
            call.cancel()
    finally:
        await server.stop()
