"""The registry's embedded PostgreSQL, as real processes: restarted when it dies (health goes
NOT_SERVING, then SERVING, and writes and watches work again with nothing lost), and never left
running after a clean stop, even when an earlier registry on the same data directory was SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from registry_support import Stub, deploy, next_event, register, routes_pb
from support import ServerProcess, free_port, make_postgres_dir, wait_until

from modelyard.api import registry_pb2 as pb
from modelyard.cli.stack import Stack, StackLayout
from modelyard.client.channel import open_channel

SERVICE = "modelyard.registry.v1.RegistryService"
# Detection (checked every second) + restart (0.25-0.35 s measured) + pool and LISTEN back: 1.1-1.8 s
# from the kill to SERVING here on a busy 2-core machine; the bound leaves room for a slower one.
RECOVERY_BOUND_S = 20.0


def _env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Nothing from the caller's environment may point the registry at another database (an empty
    URL means the embedded default; ServerProcess adds its own environment under these)."""
    env = dict(os.environ if base is None else base)
    env.update(MODELYARD_DATABASE_URL="", MODELYARD_REGISTRY_DATABASE_URL="", MODELYARD_LOG_LEVEL="INFO")
    return env


def spawn_embedded(data_dir: Path) -> ServerProcess:
    proc = ServerProcess(
        [
            "-m",
            "modelyard.registry",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--data-dir",
            str(data_dir),
            "--poll-interval-s",
            "0.5",
        ],
        env=_env(),
        timeout=120,
    )
    return proc


def postmaster_pid(data_dir: Path) -> int | None:
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    try:
        return int(pid_file.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def running(pid: int) -> bool:
    if pid <= 0:  # initdb's standalone backend writes its pid negated
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def postgres_processes(data_dir: Path, *, exact: bool = True) -> list[int]:
    """Every live postgres process whose command line names this data directory (or one below)."""
    pgdata = str((data_dir / "pgdata").resolve() if exact else data_dir.resolve())
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        if proc.info["name"] == "postgres" and proc.info["status"] != psutil.STATUS_ZOMBIE:
            if any(pgdata in part for part in proc.info["cmdline"] or ()):
                found.append(proc.pid)
    return found


def _stack_env(stack: Stack) -> dict[str, str]:
    return _env(stack.env)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    root = make_postgres_dir()
    yield root / "registry"
    # Whatever a failed test left behind must not outlive it.
    for pid in postgres_processes(root, exact=False):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(root, ignore_errors=True)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def _health_states(address: str, seen: list[tuple[float, int]], stop: asyncio.Event) -> None:
    """Poll the registry's health every 20 ms, recording each change of state with its time."""
    # Polling `Check`, not `Watch`: the server's error-mapping interceptor cannot wrap Watch yet.
    async with open_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
                status = reply.status
            except grpc.aio.AioRpcError:
                status = -1
            if not seen or seen[-1][1] != status:
                seen.append((time.monotonic(), status))
            await asyncio.sleep(0.02)


async def test_killed_postgres_is_restarted_and_the_registry_serves_again(data_dir: Path) -> None:
    registry = spawn_embedded(data_dir)
    try:
        async with open_channel(registry.address) as channel:
            stub = Stub(channel)
            await register(stub, "1.0.0")
            await register(stub, "1.1.0")
            created = await deploy(stub, "text", {"1.0.0": 100})

            watch = stub.WatchDeployments(pb.WatchDeploymentsRequest(deployments=["text"]))
            snapshot = await next_event(watch, 10)
            assert snapshot.revision == created.revision

            seen: list[tuple[float, int]] = []
            stop = asyncio.Event()
            follower = asyncio.create_task(_health_states(registry.address, seen, stop))
            assert await asyncio.to_thread(
                wait_until, lambda: any(s == health_pb2.HealthCheckResponse.SERVING for _, s in seen), 10
            )

            old_pid = postmaster_pid(data_dir)
            assert old_pid is not None and running(old_pid)
            killed_at = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)

            def back_to_serving() -> bool:
                states = [s for t, s in seen if t >= killed_at]
                return (
                    health_pb2.HealthCheckResponse.NOT_SERVING in states
                    and states[-1] == health_pb2.HealthCheckResponse.SERVING
                )

            assert await asyncio.to_thread(wait_until, back_to_serving, RECOVERY_BOUND_S), (
                f"health after the kill: {[s for t, s in seen if t >= killed_at]}\n" + registry.log()[-4000:]
            )
            recovered_s = (
                next(t for t, s in seen if t >= killed_at and s == health_pb2.HealthCheckResponse.SERVING)
                - killed_at
            )
            print(f"NOT_SERVING then SERVING {recovered_s:.2f} s after the kill")
            new_pid = postmaster_pid(data_dir)
            assert new_pid is not None and new_pid != old_pid and running(new_pid)
            assert registry.proc.poll() is None
            for step in ("registry.database_lost", "registry.database_restarted", "registry.database_ready"):
                assert step in registry.log(), step
            metrics = await asyncio.to_thread(_scrape, registry.metrics_port)
            assert 'modelyard_registry_database_up{database="embedded"} 1.0' in metrics

            # A write works at once once SERVING, and the open watch stream sees it: nothing lost.
            changed = await stub.SetRoutes(
                pb.SetRoutesRequest(name="text", routes=routes_pb({"1.0.0": 50, "1.1.0": 50}))
            )
            assert changed.revision == created.revision + 1
            got = await next_event(watch, 5)
            assert got.revision == changed.revision
            assert {r.version: r.weight for r in got.deployments[0].routes} == {"1.0.0": 50, "1.1.0": 50}
            listed = await stub.ListVersions(pb.ListVersionsRequest(model_id="minilm"))
            assert [v.version for v in listed.versions] == ["1.1.0", "1.0.0"]
            watch.cancel()
            stop.set()
            await follower
    finally:
        registry.terminate()
    assert postgres_processes(data_dir) == []


async def test_clean_stop_after_a_sigkilled_registry_leaves_no_postgres(data_dir: Path) -> None:
    first = spawn_embedded(data_dir)
    adopted = postmaster_pid(data_dir)
    assert adopted is not None and running(adopted)
    first.proc.kill()  # SIGKILL: no cleanup at all; its PostgreSQL keeps running
    first.proc.wait(10)
    assert running(adopted)

    second = spawn_embedded(data_dir)
    async with open_channel(second.address) as channel:
        await register(Stub(channel), "1.0.0")  # the adopted server works
    assert second.terminate() == 0
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    assert not running(adopted)
    assert postgres_processes(data_dir) == []


def test_modelyard_up_stop_stops_an_adopted_postgres(data_dir: Path) -> None:
    """`modelyard up`'s stop (SIGTERM to its registry) after an earlier stack's registry was SIGKILLed."""
    root = data_dir.parent / "stack"
    root.mkdir()
    first = Stack(StackLayout(root, registry_port=free_port()), [])
    first.env = _stack_env(first)
    registry = first.start_registry(120)
    registry_dir = first.layout.registry_dir
    adopted = postmaster_pid(registry_dir)
    assert adopted is not None and running(adopted)
    registry.proc.kill()
    registry.proc.wait(10)

    second = Stack(StackLayout(root, registry_port=free_port()), [])
    second.env = _stack_env(second)
    second.start_registry(120)
    assert postmaster_pid(registry_dir) == adopted  # adopted, not a second server
    second.stop()
    assert not (registry_dir / "pgdata" / "postmaster.pid").exists()
    assert not running(adopted)
    assert postgres_processes(registry_dir) == []


def test_sigterm_while_the_registry_starts_still_stops_its_postgres(data_dir: Path) -> None:
    """SIGTERM as soon as PostgreSQL runs, while the registry still migrates and binds its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard.registry", "--port", "0", "--data-dir", str(data_dir)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: (pid := postmaster_pid(data_dir)) is not None and running(pid), 60, 0.005)
        started = postmaster_pid(data_dir)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert started is not None and not running(started)
    assert postgres_processes(data_dir) == []
