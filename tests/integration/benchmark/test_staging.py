"""RegistryVersionStager against a real registry with no worker: staging that cannot converge undoes itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_support import TINY_DIM, Stack

from modelyard.benchmark.staging import RegistryVersionStager
from modelyard.client import RegistryClient
from modelyard.common.errors import FailedPrecondition


async def test_staging_that_never_converges_fails_and_restores_the_routes(
    stack: Stack, tiny_encoders: dict[str, Path]
) -> None:
    await stack.register(tiny_encoders["a"], "1.0.0", model_id="tiny", dim=TINY_DIM)
    await stack.register(tiny_encoders["b"], "1.1.0", model_id="tiny", dim=TINY_DIM)
    await stack.deploy("lonely", "tiny", {"1.0.0": 100})
    async with RegistryClient(stack.registry_address) as registry:
        stager = RegistryVersionStager(registry, rollout_timeout_s=0.5, poll_s=0.2)
        with pytest.raises(FailedPrecondition, match="no live worker serves the deployment"):
            await stager.stage("lonely", "1.1.0")
        assert await stack.routes("lonely") == {"1.0.0": 100}
        await stager.unstage("lonely", "1.1.0")  # nothing staged any more: a no-op
        assert await stack.routes("lonely") == {"1.0.0": 100}
