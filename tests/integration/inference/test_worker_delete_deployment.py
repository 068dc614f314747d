"""DeleteDeployment end to end: a real registry (in this process) and a real worker process serving
two deployments; deleting one reaches the worker as a DELETED event, which stops serving it, unloads
its version and drops its series from /metrics, while the other deployment serves on."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families
from worker_support import registry_version, start_worker, text_request

from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.api import registry_pb2_grpc as rpb_grpc

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _metrics(port: int) -> Samples:
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    )
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _series(samples: Samples, name: str, deployment: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name and ("deployment", deployment) in labels]


async def _eventually(check: Callable[[], object], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.1)


async def test_deleted_deployment_is_unloaded_by_the_worker_and_leaves_its_metrics(
    registry: object, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    address = registry.address  # type: ignore[attr-defined]
    async with aio.insecure_channel(address) as channel:
        reg = rpb_grpc.RegistryServiceStub(channel)
        version = registry_version(tiny_models["st0"], "1.0.0", model_id="tiny", dim=32)
        await reg.RegisterVersion(
            rpb.RegisterVersionRequest(version=version, create_model=True, model_type=rpb.TEXT_EMBEDDING)
        )
        created = {
            name: await reg.CreateDeployment(
                rpb.CreateDeploymentRequest(
                    name=name, model_id="tiny", routes=[rpb.Route(version="1.0.0", weight=100)]
                )
            )
            for name in ("doomed", "kept")
        }
        worker = start_worker(tmp_path / "cache", registry=address)  # every deployment
        try:
            for name, deployment in created.items():
                status = await reg.GetRolloutStatus(
                    rpb.GetRolloutStatusRequest(
                        deployment=name, revision=deployment.revision, wait_timeout_ms=120_000
                    )
                )
                assert status.converged, status
            async with aio.insecure_channel(worker.address) as worker_channel:
                infer = oip_grpc.GRPCInferenceServiceStub(worker_channel)
                served = await infer.ModelInfer(text_request("doomed", ["before"]))
                assert served.model_version == "1.0.0"
                per_version = {"deployment": "doomed", "model": "tiny", "version": "1.0.0"}
                loaded = {**per_version, "checkpoint": version.checkpoint_hash}
                before = await _metrics(worker.metrics_port)
                assert _value(before, "modelyard_model_loaded", **loaded) == 1
                assert _value(before, "modelyard_route_weight", **per_version) == 100
                assert _value(before, "modelyard_worker_applied_revision", deployment="doomed") == (
                    created["doomed"].revision
                )

                deleted = await reg.DeleteDeployment(
                    rpb.DeleteDeploymentRequest(name="doomed", reason="retired")
                )
                assert deleted.revision > max(d.revision for d in created.values())

                async def not_found() -> bool:
                    try:
                        await infer.ModelInfer(text_request("doomed", ["after"]))
                    except aio.AioRpcError as error:
                        assert error.code() == grpc.StatusCode.NOT_FOUND, error
                        assert "doomed" in (error.details() or "")
                        return True
                    return False

                await _eventually(not_found, "ModelInfer on the deleted deployment answers NOT_FOUND")
                ready = await infer.ModelReady(oip.ModelReadyRequest(name="doomed"))
                assert not ready.ready

                async def unloaded() -> bool:
                    samples = await _metrics(worker.metrics_port)
                    return _value(samples, "modelyard_model_loaded", **loaded) == 0

                # The version is unloaded once drained: the gauge reads 0 ("0 after it was unloaded",
                # as after a swap), while the series of the routing table go with the deployment.
                await _eventually(unloaded, "modelyard_model_loaded of the deleted deployment's version is 0")
                after = await _metrics(worker.metrics_port)
                assert _series(after, "modelyard_route_weight", "doomed") == []
                assert _series(after, "modelyard_worker_applied_revision", "doomed") == []

                # The other deployment, same version and artifact, is untouched.
                kept = {"deployment": "kept", "model": "tiny", "version": "1.0.0"}
                assert (
                    _value(after, "modelyard_model_loaded", **kept, checkpoint=version.checkpoint_hash) == 1
                )
                assert _value(after, "modelyard_route_weight", **kept) == 100
                assert (await infer.ModelInfer(text_request("kept", ["still"]))).model_version == "1.0.0"

            log = worker.log()
            assert f"registry.event kind=DELETED revision={deleted.revision}" in log
            assert "deployment.removed deployment=doomed" in log

            async def reported_gone() -> bool:
                workers = (await reg.ListWorkers(rpb.ListWorkersRequest())).workers
                return [sorted(d.deployment for d in w.deployments) for w in workers] == [["kept"]]

            await _eventually(reported_gone, "the worker's heartbeat no longer lists the deleted deployment")
        finally:
            worker.kill()

        with pytest.raises(aio.AioRpcError) as gone:
            await reg.GetDeployment(rpb.GetDeploymentRequest(name="doomed"))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        audit = await reg.ListAuditEvents(
            rpb.ListAuditEventsRequest(
                entity_type="deployment", entity_id="doomed", action="deployment.delete"
            )
        )
        (event,) = audit.events
        assert (event.reason, event.revision, event.after_json) == ("retired", deleted.revision, "")
        assert json.loads(event.before_json)["name"] == "doomed"
