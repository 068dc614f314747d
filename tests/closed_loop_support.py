"""What the live rollout and shadow tests share: a registry tuned for fast live evidence, the
`text` deployment seeded with real versions, and closed-loop clients of the workers that count
every answer's version and every failure."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from registry_support import Stub
from sentences import english

from modelyard.api import registry_pb2 as rpb
from modelyard.client import ClientSettings, InferenceClient, ModelyardError
from modelyard.client.channel import open_channel
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings


def live_registry(database_url: str, **overrides: object) -> RegistryServer:
    """Heartbeats every 200 ms, history every 0.5 s, the plan driver every 0.25 s."""
    settings: dict[str, object] = {
        "database_url": database_url, "host": "127.0.0.1", "port": 0, "metrics_port": None,
        "poll_interval_s": 0.5, "grace_period_s": 1.0, "heartbeat_interval_ms": 200, "heartbeat_ttl_s": 3.0,
        "live_window_s": 60.0, "live_sample_interval_s": 0.5, "rollout_driver_interval_s": 0.25, **overrides,
    }  # fmt: skip
    return RegistryServer(RegistrySettings(**settings))  # type: ignore[arg-type]


async def deploy_versions(
    address: str,
    name: str,
    versions: Sequence[rpb.ModelVersion],
    routes: dict[str, int],
    token: str | None = None,
) -> None:
    """Register `versions` (model created with the first) and create deployment `name` on `routes`."""
    async with open_channel(address, ClientSettings(token=token)) as channel:
        stub = Stub(channel)
        for v in versions:
            await stub.RegisterVersion(
                rpb.RegisterVersionRequest(version=v, create_model=True, model_type=rpb.TEXT_EMBEDDING)
            )
        await stub.CreateDeployment(
            rpb.CreateDeploymentRequest(
                name=name,
                model_id=versions[0].model_id,
                routes=[rpb.Route(version=v, weight=w) for v, w in routes.items()],
            )
        )


async def seed_text(address: str, versions: Sequence[rpb.ModelVersion], token: str | None = None) -> None:
    """Register `versions` and deploy `text` 100% to the first."""
    await deploy_versions(address, "text", versions, {versions[0].version: 100}, token)


@dataclass
class Load:
    """Closed-loop clients of `text`, spread over the workers; every failure counted by status code."""

    addresses: Sequence[str]
    token: str | None = None
    max_texts: int = 1  # each request carries 1..max_texts English sentences
    versions: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, index: int) -> None:
        rng = random.Random(index)
        address = self.addresses[index % len(self.addresses)]
        async with InferenceClient(address, settings=ClientSettings(token=self.token)) as worker:
            while not self.stop.is_set():
                texts = [english(rng) for _ in range(rng.randint(1, self.max_texts))]
                try:
                    answer = await worker.embed_texts("text", texts)
                except ModelyardError as error:
                    self.failures[error.code.name] += 1
                    continue
                self.versions[answer.version] += 1


@contextlib.asynccontextmanager
async def load(
    addresses: Sequence[str], clients: int = 4, *, token: str | None = None, max_texts: int = 1
) -> AsyncIterator[Load]:
    running = Load(addresses, token, max_texts)
    tasks = [asyncio.create_task(running.client(i)) for i in range(clients)]
    try:
        yield running
    finally:
        running.stop.set()
        await asyncio.gather(*tasks)
