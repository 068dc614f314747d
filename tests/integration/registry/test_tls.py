"""TLS is a setting: a registry with a certificate serves TLS clients that trust its CA, and
refuses plaintext ones."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from modelyard.api import registry_pb2 as pb
from modelyard.api import registry_pb2_grpc
from modelyard.client import ClientSettings
from modelyard.client.channel import open_channel
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings


def make_certificates(directory: Path, san: str = "DNS:localhost,IP:127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `san` (default localhost/127.0.0.1) it signed."""
    openssl = shutil.which("openssl")
    if openssl is None:
        # Part of every Debian/Ubuntu base image; a test that silently skipped would hide TLS breaking.
        pytest.fail("openssl is not installed; it makes the test certificates (apt-get install openssl)")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=modelyard-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (directory / "san.ext").write_text(f"subjectAltName={san}\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
        "-extfile", "san.ext", "-out", "server.pem")  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


@contextlib.asynccontextmanager
async def tls_registry(database_url: str, cert: Path, key: Path) -> AsyncIterator[RegistryServer]:
    server = RegistryServer(
        RegistrySettings(
            database_url=database_url, port=0, metrics_port=None,
            tls_cert_file=str(cert), tls_key_file=str(key),
        )
    )  # fmt: skip
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_tls_registry(database_url: str, tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    async with tls_registry(database_url, cert, key) as server:
        secure = ClientSettings(tls=True, tls_ca_file=str(ca))
        async with open_channel(server.address, secure) as channel:
            listed = await registry_pb2_grpc.RegistryServiceStub(channel).ListModels(pb.ListModelsRequest())
            assert list(listed.models) == []
        async with open_channel(server.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await registry_pb2_grpc.RegistryServiceStub(channel).ListModels(
                    pb.ListModelsRequest(), timeout=3
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        async with open_channel(
            server.address, ClientSettings(tls=True)
        ) as channel:  # trusts system CAs only
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await registry_pb2_grpc.RegistryServiceStub(channel).ListModels(
                    pb.ListModelsRequest(), timeout=3
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_server_reached_by_ip_is_verified_against_the_configured_name(
    database_url: str, tmp_path: Path
) -> None:
    """Workers advertise pod IPs, which their shared certificate does not name: clients check
    MODELYARD_TLS_SERVER_NAME instead, and still refuse a certificate without that name."""
    ca, cert, key = make_certificates(tmp_path, san="DNS:modelyard.internal")
    async with tls_registry(database_url, cert, key) as server:
        by_ip = ClientSettings(tls=True, tls_ca_file=str(ca))
        async with open_channel(server.address, by_ip) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await registry_pb2_grpc.RegistryServiceStub(channel).ListModels(
                    pb.ListModelsRequest(), timeout=3
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        named = ClientSettings(tls=True, tls_ca_file=str(ca), tls_server_name="modelyard.internal")
        async with open_channel(server.address, named) as channel:
            await registry_pb2_grpc.RegistryServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
        wrong = ClientSettings(tls=True, tls_ca_file=str(ca), tls_server_name="other.internal")
        async with open_channel(server.address, wrong) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await registry_pb2_grpc.RegistryServiceStub(channel).ListModels(
                    pb.ListModelsRequest(), timeout=3
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
