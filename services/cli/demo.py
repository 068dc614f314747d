"""`make demo`: the model-upgrade story, told through the `modelyard` CLI against `modelyard up`.

Starts the stack (registry on an embedded PostgreSQL, two text-embedding workers, the tiny image and
captioning workers, the benchmark service) in a fresh directory; imports all-MiniLM-L6-v2 as 1.0.0
(384-dim) and all-mpnet-base-v2, assembled from its five PyPI parts, as 2.0.0 (768-dim, a new major);
keeps a steady OIP ModelInfer load on every text worker that checks each response's dimension against
the version that served it; benchmarks both (quality, then load); shows the promotion of 2.0.0 refused
because consumers depend on 384-dim vectors, then accepted with the acknowledgment, every worker
switching with no failed request; rolls back; and prints a summary, worker memory included. Every
figure printed is measured in this run.
"""

from __future__ import annotations

import json
import math
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

from modelyard.client.sync import InferenceClient, ModelyardError, RegistryClient

DEPLOYMENT = "text-embedding"
MODEL = "text-embedder"
BASE, UPGRADE = "1.0.0", "2.0.0"
SUITE = "stdlib-docstrings"
LOAD_LEVEL = "[c=4]"
# The load suite per version: mpnet answers about two requests of 4 short sentences a second
# under the steady load, so 32 of them keep its run near 15 s.
LOAD_REQUESTS, LOAD_BATCH = 32, 4
_SENTENCES = [
    "how do I read a file line by line",
    "return the square root of a number",
    "parse a date string into a datetime",
    "join path components",
    "sort a list in place",
    "compress data with zlib",
]


def banner(text: str, started: float | None = None) -> None:
    at = f" [{time.perf_counter() - started:.0f} s]" if started is not None else ""
    print(f"\n== {text} " + "=" * max(0, 90 - len(text)) + at, flush=True)


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
            if done.returncode:
                print(f"  (exit {done.returncode})")
        if check and done.returncode != 0:
            raise SystemExit(f"demo failed: `modelyard {shlex.join(args)}` exited {done.returncode}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self("--json", *args, show=False).stdout)


@dataclass
class Sample:
    sent: float
    at: float  # answered
    version: str
    latency_s: float
    dims: int


@dataclass
class SteadyLoad:
    """One client thread per worker, each sending small ModelInfer requests back to back, as a
    backend that stores vectors would: a response whose vectors lack the dimension of the version
    that served it (`dims`, from the registry) counts as failed, whatever its status."""

    addresses: list[str]
    dims: dict[str, int]
    # Light enough to leave the benchmark most of the two cores, frequent enough to catch a swap.
    pause_s: float = 0.1
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
                sent, started = time.monotonic(), time.perf_counter()
                try:
                    served = worker.embed_texts(DEPLOYMENT, texts)
                    elapsed = time.perf_counter() - started
                    shape: tuple[int, ...] = tuple(served.vectors.shape)
                    expected = self.dims.get(served.version)
                    last_version = served.version
                    if shape == (len(texts), expected):
                        self.samples[address].append(
                            Sample(sent, time.monotonic(), served.version, elapsed, int(shape[1]))
                        )
                    else:
                        self._fail(
                            served.version,
                            f"{address}: {served.version} answered {shape}, not {expected}-dim",
                        )
                except ModelyardError as error:
                    self._fail(last_version, f"{address}: {error.code.name}: {error.message}")
                self._stop.wait(self.pause_s)

    def _fail(self, version: str, what: str) -> None:
        self.failures.append((version, what))
        print(f"  !! steady load: request failed: {what}", flush=True)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def all_samples(self) -> list[Sample]:
        return [s for samples in self.samples.values() for s in samples]

    def sent_since(self, at: float) -> list[Sample]:
        """Answers to requests sent after `at` (one sent before a switch may finish on the old version)."""
        return [s for s in self.all_samples() if s.sent >= at]

    def wait_for_answers(self, since: float, *, per_client: int, timeout_s: float = 60) -> None:
        """Until every client has `per_client` answers to requests sent after `since` (mpnet under
        the benchmark's load answers in seconds, not milliseconds)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(sum(1 for s in self.samples[a] if s.sent >= since) >= per_client for a in self.addresses):
                return
            time.sleep(0.1)

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


class WorkerMemory:
    """Each text worker's resident memory at the story's stages, from its own /metrics
    (`process_resident_memory_bytes`), read once the versions of that stage are loaded or unloaded
    (`modelyard_model_loaded`)."""

    def __init__(self, workers: list[dict[str, Any]]) -> None:
        self.workers = workers
        self.stages: list[tuple[str, list[float]]] = []

    def _gauges(self, worker: dict[str, Any]) -> tuple[float, dict[str, float]]:
        from prometheus_client.parser import text_string_to_metric_families

        rss, loaded = float("nan"), dict[str, float]()
        for family in text_string_to_metric_families(scrape(worker["metrics_url"])):
            for s in family.samples:
                if s.name == "process_resident_memory_bytes":
                    rss = s.value / 2**20
                elif s.name == "modelyard_model_loaded" and s.labels.get("deployment") == DEPLOYMENT:
                    loaded[s.labels["version"]] = max(loaded.get(s.labels["version"], 0.0), s.value)
        return rss, loaded

    def record(self, stage: str, *, loaded: set[str], timeout_s: float = 60) -> list[float]:
        """RSS per worker once exactly `loaded` is loaded on every worker (unloads run after drain)."""
        deadline = time.monotonic() + timeout_s
        while True:
            readings = [self._gauges(w) for w in self.workers]
            if all({v for v, on in gauges.items() if on} == loaded for _, gauges in readings):
                break
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"demo failed: workers did not hold exactly {sorted(loaded)} within {timeout_s} s"
                )
            time.sleep(0.5)
        time.sleep(1.0)  # let the freed pages go back after the unload's trim
        rss = [self._gauges(w)[0] for w in self.workers]
        self.stages.append((stage, rss))
        print(
            f"  worker RSS with {stage}: "
            + ", ".join(f"{w['name']} {r:.0f} MiB" for w, r in zip(self.workers, rss, strict=True))
        )
        return rss

    def rss(self, stage: str) -> list[float]:
        return next(values for name, values in self.stages if name == stage)


def start_stack(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    command = [
        "up",
        "--data-dir",
        str(data_dir),
        "--registry-port",
        "0",
        "--benchmark-port",
        "0",
        "--console-port",
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
        return _story(up, stack, env, demo_started)
    finally:
        if up.poll() is None:
            stop_stack(up)


@dataclass
class Facts:
    """What the story measured, for the summary."""

    load_s: dict[str, float] = field(default_factory=dict)  # deploy / stage until every worker serves it
    swap_s: dict[str, float] = field(default_factory=dict)  # until every steady client got the version
    quality: list[dict[str, Any]] = field(default_factory=list)  # compare rows, stdlib-docstrings
    load: list[dict[str, Any]] = field(default_factory=list)  # compare rows, load suite


def _story(up: subprocess.Popen[str], stack: dict[str, Any], env: dict[str, str], demo_started: float) -> int:
    cli = Cli(env)
    text_workers = [w for w in stack["workers"] if w["deployment"] == DEPLOYMENT]
    dims: dict[str, int] = {}
    load = SteadyLoad([w["address"] for w in text_workers], dims)
    memory = WorkerMemory(text_workers)
    facts = Facts()
    try:
        banner("2. two real models from installed packages (nothing is downloaded)", demo_started)
        minilm = cli("models", "example", "minilm").stdout.strip().splitlines()[-1]
        mpnet = cli("models", "example", "mpnet").stdout.strip().splitlines()[-1]
        cli("models", "import", minilm, "--model", MODEL, "--version", BASE,
            "--description", "all-MiniLM-L6-v2: 6 layers, 384-dim")  # fmt: skip
        cli("models", "import", mpnet, "--model", MODEL, "--version", UPGRADE, "--parent-version", BASE,
            "--description", "all-mpnet-base-v2: 12 layers, 768-dim; a new major: its vectors do not mix with 1.x")  # fmt: skip
        for version in (BASE, UPGRADE):
            dims[version] = int(
                cli.json("models", "show", MODEL, version)["version"]["signature"]["embedding_dim"]
            )
        cli("models", "list", MODEL)

        banner(f"3. {BASE} serves production; {DEPLOYMENT} follows the alias", demo_started)
        memory.record("no text model", loaded=set())
        cli("models", "alias", MODEL, "production", BASE, "--reason", "first release")
        started = time.monotonic()
        cli("deployments", "create", DEPLOYMENT, "--model", MODEL, "--follow-alias", "production", "--wait",
            "--description", "sentence embeddings for the search index")  # fmt: skip
        facts.load_s[BASE] = time.monotonic() - started
        memory.record(f"{BASE} loaded", loaded={BASE})

        banner(
            f"4. steady load: one ModelInfer client per worker ({len(text_workers)} workers), dims checked",
            demo_started,
        )
        load.start()
        time.sleep(2)
        print(f"  {len(load.all_samples())} requests so far, {len(load.failures)} failed")

        banner(
            f"5. stage {UPGRADE} beside it (weight 0: loaded and warmed, answers only when pinned)",
            demo_started,
        )
        cli("deployments", "check", DEPLOYMENT, UPGRADE, check=False)
        started = time.monotonic()
        cli("deployments", "set-routes", DEPLOYMENT, f"{BASE}=100", f"{UPGRADE}=0", "--wait",
            "--reason", f"stage {UPGRADE} for benchmarking")  # fmt: skip
        facts.load_s[UPGRADE] = time.monotonic() - started
        memory.record(f"{BASE} + {UPGRADE} loaded", loaded={BASE, UPGRADE})

        banner(f"6. benchmark both: {SUITE} quality, then load at concurrency 4", demo_started)
        cli("bench", "run", DEPLOYMENT, BASE, UPGRADE, "--suite", SUITE)
        compare = ("bench", "compare", "--model", MODEL, "--suite", SUITE, BASE, UPGRADE)
        cli(*compare)
        facts.quality = cli.json(*compare)["metrics"]
        cli("bench", "run", DEPLOYMENT, BASE, UPGRADE, "--suite", "load", "--concurrency", "4",
            "--requests", str(LOAD_REQUESTS), "--warmup-requests", "2", "--batch-size", str(LOAD_BATCH))  # fmt: skip
        compare = ("bench", "compare", "--model", MODEL, "--suite", "load", BASE, UPGRADE)
        cli(*compare)
        facts.load = cli.json(*compare)["metrics"]
        _say_who_wins(facts)

        banner(
            f"7. promote {UPGRADE}: refused, the consumers depend on {dims[BASE]}-dim vectors", demo_started
        )
        recall = {m["metric"]: m for m in facts.quality}["recall@10"]
        gate = f"recall@10 >= {recall['baseline']:.4f}"  # at least as good as production, as measured
        before = _state(cli)
        refused = cli(
            "deployments", "promote", DEPLOYMENT, UPGRADE, "--gate", gate, "--gate-suite", SUITE, check=False
        )
        code = _refusal_code(env, gate)
        after = _state(cli)
        print(f"  exit {refused.returncode}; the registry answered {code}")
        print(f"  unchanged: {_state_text(after)}")
        if refused.returncode != 3 or code != "FAILED_PRECONDITION" or after != before:
            raise SystemExit(
                f"demo failed: the refusal was {code}, or something changed: {before} -> {after}"
            )

        banner(f"8. promote {UPGRADE} with --acknowledge-incompatible: every worker switches", demo_started)
        promoted_at = time.monotonic()
        cli("deployments", "promote", DEPLOYMENT, UPGRADE, "--gate", gate, "--gate-suite", SUITE, "--acknowledge-incompatible",
            "--wait", "--reason", "better retrieval; the index is re-embedded with 2.0.0")  # fmt: skip
        switched_at = time.monotonic()
        facts.swap_s[UPGRADE] = _check_served(load, promoted_at, switched_at, UPGRADE, dims[UPGRADE])
        memory.record(f"{UPGRADE} only ({BASE} unloaded)", loaded={UPGRADE})
        cli("deployments", "status", DEPLOYMENT)

        banner("9. per-version latency read from the workers' /metrics", demo_started)
        _print_metrics(text_workers)

        banner(
            f"10. roll back to {BASE}: a signature change again (the index now holds {dims[UPGRADE]}-dim vectors)",
            demo_started,
        )
        cli("deployments", "rollback", DEPLOYMENT, "--reason", "demo: roll back", check=False)
        rolled_at = time.monotonic()
        cli("deployments", "rollback", DEPLOYMENT, "--acknowledge-incompatible", "--wait",
            "--reason", "demo: roll back")  # fmt: skip
        facts.swap_s[BASE] = _check_served(load, rolled_at, time.monotonic(), BASE, dims[BASE])
        cli(
            "deployments", "set-routes", DEPLOYMENT, f"{BASE}=100", "--wait", "--reason", f"unstage {UPGRADE}"
        )
        memory.record(f"{BASE} only again ({UPGRADE} unloaded)", loaded={BASE})
        cli("deployments", "history", DEPLOYMENT, "--limit", "8")
    finally:
        load.stop()

    banner("11. summary (every figure measured in this run)", demo_started)
    _summary(cli, load, memory, facts, dims)
    banner("12. stop the stack (SIGTERM to `modelyard up`)", demo_started)
    print(f"  stopped in {stop_stack(up):.1f} s; demo took {time.perf_counter() - demo_started:.0f} s")
    return 0 if not load.failures else 1


def _say_who_wins(facts: Facts) -> None:
    rows = {m["metric"]: m for m in facts.quality + facts.load}
    for name in (
        "recall@10",
        "ndcg@10",
        "latency_ms",
        f"latency_p99_ms{LOAD_LEVEL}",
        f"throughput_rps{LOAD_LEVEL}",
    ):
        m = rows.get(name)
        if m is None:
            continue
        who = {"candidate": UPGRADE, "baseline": BASE}.get(m["winner"], m["winner"])
        interval = f"[{m['ci_low']:+.4g}, {m['ci_high']:+.4g}]" if "ci_low" in m else "-"
        print(f"  {name:<22} {UPGRADE} - {BASE} = {m['delta']:+.4g}, 95% interval {interval}: {who} wins")


def _state(cli: Cli) -> dict[str, Any]:
    """What a refused promotion must leave as it was: routes, revision, alias, audit log."""
    status = cli.json("deployments", "status", DEPLOYMENT)["deployment"]
    production = cli.json("models", "show", MODEL, "production")["version"]["version"]
    history = cli.json("deployments", "history", "--limit", "1000")  # models and aliases too
    return {
        "routes": [(r["version"], r.get("weight", 0)) for r in status["routes"]],
        "revision": status["revision"],
        "production": production,
        "audit_events": len(history),
    }


def _state_text(state: dict[str, Any]) -> str:
    routes = " ".join(f"{v}={w}" for v, w in state["routes"])
    return (
        f"routes {routes} at revision {state['revision']}, production -> {state['production']}, "
        f"{state['audit_events']} audit events"
    )


def _refusal_code(env: dict[str, str], gate: str) -> str:
    """The status code of the same promotion, asked as any gRPC client would."""
    from modelyard.api import registry_pb2 as rpb

    with RegistryClient(env["MODELYARD_REGISTRY_ADDRESS"]) as registry:
        try:
            registry.promote_version(
                rpb.PromoteVersionRequest(
                    deployment=DEPLOYMENT, version=UPGRADE, gates=[gate], gate_suite=SUITE
                )
            )
        except ModelyardError as error:
            return error.code.name
    return "OK (not refused)"


def _check_served(load: SteadyLoad, command_at: float, since: float, version: str, dims: int) -> float:
    """Every answer to a request sent after `since` (the switch command returned) came from
    `version` with `dims`-dim vectors; returns the swap time seen by the clients."""
    load.wait_for_answers(since, per_client=3)
    swap_s = load.switch_seconds(command_at, version)
    after = load.sent_since(since)
    wrong = [s for s in after if s.version != version or s.dims != dims]
    print(
        f"  steady load: every client answered by {version} {swap_s:.2f} s after the command; since it "
        f"returned, {len(after)} responses, {len(after) - len(wrong)} from {version} with {dims}-dim vectors; "
        f"failed requests so far: {len(load.failures)}"
    )
    if not after or wrong:
        raise SystemExit(
            f"demo failed: after the switch to {version}: {len(wrong)} of {len(after)} responses differ: "
            + ", ".join(sorted({f"{s.version} ({s.dims}-dim)" for s in wrong}))
        )
    return swap_s


def _print_metrics(workers: list[dict[str, Any]]) -> None:
    metrics = histogram_quantiles([scrape(w["metrics_url"]) for w in workers], DEPLOYMENT)
    for worker in workers:
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


def _summary(cli: Cli, load: SteadyLoad, memory: WorkerMemory, facts: Facts, dims: dict[str, int]) -> None:
    shown = {v: cli.json("models", "show", MODEL, v) for v in (BASE, UPGRADE)}
    per_version: dict[str, int] = defaultdict(int)
    for sample in load.all_samples():
        per_version[sample.version] += 1
    print(
        "  quality: stdlib-docstrings (612 documents, 600 queries); p50/p99/req/s: load suite, concurrency 4,"
    )
    print(
        f"  {LOAD_BATCH} sentences a request; load: until every worker served it; swap: promotion ({UPGRADE}) /"
    )
    print(
        f"  rollback ({BASE}) until every steady client got that version ({UPGRADE} was staged, {BASE} reloaded)"
    )
    print(
        f"  {'version':<8} {'model':<18} {'dims':>4} {'recall@10':>9} {'nDCG@10':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'req/s':>6} {'load s':>6} {'swap s':>6} {'steady reqs':>11} {'failed':>6}"
    )
    nan = float("nan")
    for version, info in shown.items():
        values = {m["name"]: m.get("value", 0.0) for m in info.get("metrics", [])}
        model = info["version"].get("description", "").split(":")[0]
        print(
            f"  {version:<8} {model:<18} {dims[version]:>4} {values.get('recall@10', nan):>9.4f} "
            f"{values.get('ndcg@10', nan):>8.4f} {values.get('latency_p50_ms' + LOAD_LEVEL, nan):>7.1f} "
            f"{values.get('latency_p99_ms' + LOAD_LEVEL, nan):>7.1f} {values.get('throughput_rps' + LOAD_LEVEL, nan):>6.2f} "
            f"{facts.load_s.get(version, nan):>6.1f} {facts.swap_s.get(version, nan):>6.2f} "
            f"{per_version.get(version, 0):>11} {sum(1 for v, _ in load.failures if v == version):>6}"
        )
    _say_who_wins(facts)
    total = len(load.all_samples())
    latencies = [s.latency_s * 1000 for s in load.all_samples()]
    print(
        f"  steady load: {total} requests, {len(load.failures)} failed, client p50/p99 "
        f"{percentile(latencies, 0.5):.1f}/{percentile(latencies, 0.99):.1f} ms"
    )
    for _, failure in load.failures[:5]:
        print(f"  failed: {failure}")
    print("  worker RSS (MiB, per text worker):")
    for stage, readings in memory.stages:
        print(f"    {stage:<34} " + "  ".join(f"{v:>6.0f}" for v in readings))
    single = memory.rss(f"{BASE} loaded")
    again = memory.rss(f"{BASE} only again ({UPGRADE} unloaded)")
    empty = memory.rss("no text model")
    both = memory.rss(f"{BASE} + {UPGRADE} loaded")
    alone = memory.rss(f"{UPGRADE} only ({BASE} unloaded)")
    for i, worker in enumerate(memory.workers):
        # 2.0.0 alone should hold what it added beside 1.0.0, over the libraries' baseline.
        expected_alone = empty[i] + (both[i] - single[i])
        print(
            f"    {worker['name']}: after the round trip {again[i] / single[i] - 1:+.1%} vs {BASE} loaded "
            f"(goal within 10 %: {'met' if abs(again[i] / single[i] - 1) <= 0.10 else 'MISSED'}); "
            f"{UPGRADE} alone {alone[i] / expected_alone - 1:+.1%} vs no-model + its share "
            f"({'met' if math.isfinite(alone[i]) and abs(alone[i] / expected_alone - 1) <= 0.10 else 'MISSED'})"
        )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="modelyard-demo-") as tmp:
        Path(tmp).chmod(0o755)  # the embedded PostgreSQL may run as an unprivileged user
        code = run(Path(tmp))
    sys.exit(code)


if __name__ == "__main__":
    main()
