"""Console benchmark (issue 12): the server time of GET /catalog with 10,000 versions registered, and
a route change's way to a browser's DOM. Writes the `console` section of docs/benchmarks.md.

1. Catalog: a registry (tokens on) on an embedded PostgreSQL 16 with 10,000 versions of four models,
   and `python -m modelyard.console` holding only the token's verifier. The benchmark logs in over
   HTTP, keeps the cookie and one keep-alive connection, and times GET /catalog (first page, a deep
   page reached through "Next" links, two searches, a model filter): the HTTP round trip, the
   console's own `Server-Timing: app;dur=` and, with the user's token, the two registry calls the
   page makes (ListModels + ListVersions) timed from this process.
2. Route change -> DOM: `modelyard up --tiny-text --text-workers 2` with tokens, a headless Chromium
   logged in on /deployments/text-embedding. A MutationObserver in the page logs Date.now() with what
   the live region shows; SetRoutes flips the deployment between two versions through
   `modelyard.client`, and each change's latency runs from the RPC's return (time.time(), same clock)
   to the first DOM state with the new revision, and to the first with every worker row serving the
   new version at that revision (data-serving, data-revision).

Run with `make bench` (or `PYTHONPATH=tests .venv/bin/python tests/bench/bench_console.py`);
`--only catalog` or `--only routes` runs one part and prints it without writing the report.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import http.client
import json
import math
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from report import git_commit, machine, write_section
from support import PostgresInstance, ServerProcess, free_port, make_postgres_dir
from up_support import modelyard_up

from modelyard.api import registry_pb2 as pb
from modelyard.client.sync import RegistryClient
from modelyard.common.auth import new_token, token_verifier
from modelyard.common.server import freeze_startup_objects
from modelyard.registry.db import migrate

VERSIONS = 10_000
MODELS = {  # model -> (type, share of the versions); registered interleaved, as over months
    "minilm": (pb.TEXT_EMBEDDING, 4),
    "mpnet": (pb.TEXT_EMBEDDING, 3),
    "clip": (pb.IMAGE_EMBEDDING, 2),
    "captioner": (pb.CAPTIONING, 1),
}
REQUESTS = 50
WARMUP = 5
DEEP_PAGE = 20
CATALOG_GOAL_MS = 150.0
CHANGES = 30
DOM_GOAL_S = 1.0
DEPLOYMENT = "text-embedding"
MODEL = "tiny-text"
SEARCH_COMMON, SEARCH_RARE = "hotfix", "the one rare release"


def pct(samples: list[float], q: float) -> float:
    """Nearest rank: the smallest sample with at least q% of the samples at or below it."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# ---- 1. the catalog -----------------------------------------------------------------------------


async def bulk_versions(url: str) -> None:
    """VERSIONS rows, copied from each model's first (RPC-registered) version with their own version,
    description, tags and lineage; set-up, not what is measured."""
    conn = await asyncpg.connect(url)
    try:
        seeds = {
            r["model_id"]: r
            for r in await conn.fetch(
                "SELECT model_id, source_uri, loader, inference_config::text AS config,"
                " signature::text AS signature FROM model_versions"
            )
        }
        cycle = [model for model, (_, share) in MODELS.items() for _ in range(share)]
        counts = dict.fromkeys(MODELS, 1)  # each model's 1.0.0 exists already
        records = []
        for i in range(VERSIONS - len(MODELS)):
            model = cycle[i % len(cycle)]
            k = counts[model]
            counts[model] += 1
            seed = seeds[model]
            version, parent = f"1.{k // 100}.{k % 100}", f"1.{(k - 1) // 100}.{(k - 1) % 100}"
            description = (
                SEARCH_RARE
                if i == VERSIONS // 3
                else f"{'hotfix for tokenizer drift' if i % 100 == 7 else 'nightly retrain'} #{i}"
            )
            tags = {"dataset": f"shard-{i % 10}", "team": "search" if i % 3 else "vision"}
            lineage = {"parent_version": parent, "git_commit": f"{i:07x}", "training_run": f"run-{i}"}
            records.append(
                (model, version, seed["source_uri"], f"{i:064x}", seed["loader"], seed["config"],
                 seed["signature"], json.dumps(lineage), json.dumps(tags), description, "ci")
            )  # fmt: skip
        await conn.executemany(
            "INSERT INTO model_versions (model_id, version, source_uri, checkpoint_hash, loader,"
            " inference_config, signature, lineage, tags, description, created_by)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, $9::jsonb, $10, $11)",
            records,
        )
        await conn.execute("ANALYZE")
        total = await conn.fetchval("SELECT count(*) FROM model_versions")
        if total != VERSIONS:
            raise RuntimeError(f"{total} versions registered, expected {VERSIONS}")
    finally:
        await conn.close()


def seed_models(registry: RegistryClient) -> None:
    for model, (kind, _) in MODELS.items():
        dim = 512 if kind == pb.IMAGE_EMBEDDING else 384
        registry.register_version(
            pb.RegisterVersionRequest(
                version=pb.ModelVersion(
                    model_id=model,
                    version="1.0.0",
                    source_uri=f"file:///models/{model}/1.0.0",
                    checkpoint_hash="ab" * 32,
                    loader="sentence-transformers" if kind == pb.TEXT_EMBEDDING else "open-clip",
                    signature=pb.Signature(embedding_dim=dim if kind != pb.CAPTIONING else 0),
                ),
                create_model=True,
                model_type=kind,
            )
        )
    registry.set_alias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))


class Browserless:
    """One logged-in user of the console over one keep-alive HTTP/1.1 connection."""

    def __init__(self, address: str, token: str) -> None:
        host, port = address.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.cookie = ""
        status, _, body = self.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', body)
        if status != 200 or csrf is None:
            raise RuntimeError(f"GET /login answered {status} without a CSRF field")
        form = urllib.parse.urlencode(
            {"csrf": html.unescape(csrf.group(1)), "next": "/catalog", "token": token}
        )
        status, headers, _ = self.request("POST", "/login", form)
        if status != 303 or headers.get("location") != "/catalog":
            raise RuntimeError(f"logging in answered {status} {headers}")

    def request(self, method: str, path: str, body: str = "") -> tuple[int, dict[str, str], str]:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body or None, headers=headers)
        response = self.conn.getresponse()
        text = response.read().decode()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie" and value.startswith("modelyard_console="):
                self.cookie = value.split(";", 1)[0]
        return response.status, {k.lower(): v for k, v in response.getheaders()}, text

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path)


@dataclass
class CatalogCase:
    name: str
    path: str
    request: pb.ListVersionsRequest
    round_trip_ms: list[float]
    server_ms: list[float]
    registry_ms: list[float]
    cards: int


def check_page(case: str, body: str, *, model: str = "", query: str = "", page: int = 1) -> int:
    """The page a user would see: the expected page number, and cards that match the filter."""
    shown = re.search(r'id="page-info" data-page="(\d+)"', body)
    if shown is None or int(shown.group(1)) != page:
        raise RuntimeError(f"{case}: not page {page} of the catalog")
    cards = re.findall(r'<article class="card[^"]*" data-model="([^"]+)" data-version="([^"]+)"', body)
    if not cards or (model and any(m != model for m, _ in cards)):
        raise RuntimeError(f"{case}: cards {cards[:3]} do not match model {model!r}")
    if query and body.count(html.escape(query)) < len(cards):
        raise RuntimeError(f"{case}: a card does not mention {query!r}")
    return len(cards)


def next_link(body: str) -> str:
    found = re.search(r'id="next-page" href="([^"]+)"', body)
    if found is None:
        raise RuntimeError("the catalog page has no Next link")
    return html.unescape(found.group(1))


def time_case(user: Browserless, registry: RegistryClient, case: CatalogCase) -> None:
    for i in range(WARMUP + REQUESTS):
        started = time.perf_counter()
        status, headers, _ = user.get(case.path)
        elapsed = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"{case.name}: GET {case.path} answered {status}")
        timing = re.search(r"app;dur=([\d.]+)", headers.get("server-timing", ""))
        if timing is None:
            raise RuntimeError("the console sent no Server-Timing header")
        started = time.perf_counter()
        registry.list_models(pb.ListModelsRequest(page_size=200))
        registry.list_versions(case.request)
        rpc = time.perf_counter() - started
        if i >= WARMUP:
            case.round_trip_ms.append(elapsed * 1000)
            case.server_ms.append(float(timing.group(1)))
            case.registry_ms.append(rpc * 1000)


async def new_database(pg: PostgresInstance) -> str:
    admin = await asyncpg.connect(pg.url())
    try:
        await admin.execute("CREATE DATABASE bench")
    finally:
        await admin.close()
    url = pg.url("bench")
    await migrate(url)
    return url


def catalog_part(root: Path) -> list[CatalogCase]:
    pg = PostgresInstance(root / "data")
    token = new_token()
    processes: list[ServerProcess] = []
    try:
        url = asyncio.run(new_database(pg))
        registry = ServerProcess(
            ["-m", "modelyard.registry", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
             "--database-url", url],
            env={"MODELYARD_ADMIN_TOKENS": f"ops:{token}", "MODELYARD_ARTIFACT_ROOTS": "file:///models/"},
        )  # fmt: skip
        processes.append(registry)
        with RegistryClient(registry.address, token=token) as client:
            seed_models(client)
        asyncio.run(bulk_versions(url))
        # As users deploy it: the console holds the token's verifier, never the token.
        console = ServerProcess(
            ["-m", "modelyard.console", "--port", "0", "--registry", registry.address,
             "--benchmark", f"127.0.0.1:{free_port()}"],
            env={"MODELYARD_ADMIN_TOKENS": f"ops:{token_verifier(token)}"},
        )  # fmt: skip
        processes.append(console)
        return measure_catalog(console.address, registry.address, token)
    finally:
        for process in processes:
            process.kill()
        pg.server.cleanup()


def measure_catalog(console: str, registry_address: str, token: str) -> list[CatalogCase]:
    user = Browserless(console, token)
    freeze_startup_objects()
    status, _, body = user.get("/catalog")
    size = check_page("first page", body) if status == 200 else 0
    # A deep page as a user reaches it: "Next" DEEP_PAGE - 1 times; its token is the registry's.
    path = "/catalog"
    for page in range(2, DEEP_PAGE + 1):
        path = next_link(body)
        _, _, body = user.get(path)
        check_page("deep page", body, page=page)
    deep_token = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)["page_token"][0]

    def case(name: str, path: str, **request: Any) -> CatalogCase:
        return CatalogCase(name, path, pb.ListVersionsRequest(page_size=size, **request), [], [], [], 0)

    cases = [
        case("first page", "/catalog"),
        case(f"page {DEEP_PAGE} (via Next links)", path, page_token=deep_token),
        case(f"search `{SEARCH_COMMON}` (1% match)", f"/catalog?q={SEARCH_COMMON}", query=SEARCH_COMMON),
        case(
            "search, one match (scans all)",
            "/catalog?" + urllib.parse.urlencode({"q": SEARCH_RARE}),
            query=SEARCH_RARE,
        ),
        case("filter model=clip", "/catalog?model=clip", model_id="clip"),
    ]
    checks: list[dict[str, Any]] = [
        {},
        {"page": DEEP_PAGE},
        {"query": SEARCH_COMMON},
        {"query": SEARCH_RARE},
        {"model": "clip"},
    ]
    with RegistryClient(registry_address, token=token) as registry:
        for c, check in zip(cases, checks, strict=True):
            _, _, body = user.get(c.path)
            c.cards = check_page(c.name, body, **check)
            time_case(user, registry, c)
    return cases


def catalog_lines(cases: list[CatalogCase]) -> list[str]:
    lines = [
        f"| GET /catalog, {VERSIONS:,} versions | cards | requests | p50 ms | p95 ms | p99 ms | "
        "console's own p95 ms | registry calls p95 ms | goal p95 ≤ 150 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        p95 = pct(c.round_trip_ms, 95)
        lines.append(
            f"| {c.name} | {c.cards} | {len(c.round_trip_ms)} | {pct(c.round_trip_ms, 50):.1f} | {p95:.1f} | "
            f"{pct(c.round_trip_ms, 99):.1f} | {pct(c.server_ms, 95):.1f} | {pct(c.registry_ms, 95):.1f} | "
            f"{'yes' if p95 <= CATALOG_GOAL_MS else '**no**'} |"
        )
    return lines


# ---- 2. route change -> DOM ---------------------------------------------------------------------

# Logs, on every change of the live region, when it happened and what it shows.
OBSERVER = """
const live = document.getElementById('live');
window.__states = [];
const note = () => {
  const card = live.querySelector('article.deployment');
  const rows = [...live.querySelectorAll('tr[data-worker]')].map(
      r => [r.dataset.serving.split(' '), Number(r.dataset.revision)]);
  window.__states.push({t: Date.now(), revision: card ? Number(card.dataset.revision) : 0, rows: rows});
};
new MutationObserver(note).observe(live, {childList: true, subtree: true, attributes: true});
note();
"""


@contextmanager
def tiny_stack(root: Path, admin: str, reader: str) -> Iterator[dict[str, Any]]:
    """`modelyard up --tiny-text --text-workers 2` with tokens, as tests/e2e/console starts it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "MODELYARD_ARTIFACT_STORE": str(root / "artifacts"),
           "MODELYARD_ADMIN_TOKENS": f"ops:{admin}", "MODELYARD_READER_TOKENS": f"dash:{reader}"}  # fmt: skip
    with modelyard_up(root, env, "--tiny-text", "--text-workers", "2") as running:
        yield running.state


def second_version(registry: RegistryClient) -> tuple[str, str]:
    """The seeded version and a copy of it under another number (same artifact: loads as fast)."""
    deployment = registry.get_deployment(pb.GetDeploymentRequest(name=DEPLOYMENT))
    (route,) = deployment.routes
    base = registry.get_version(pb.GetVersionRequest(model_id=MODEL, version=route.version))
    draft = pb.ModelVersion()
    draft.CopyFrom(base)
    for name in ("created_at", "created_by", "status", "aliases"):
        draft.ClearField(name)
    draft.version, draft.description = "0.9.0", "bench_console: the same weights, another version"
    registry.register_version(pb.RegisterVersionRequest(version=draft))
    return route.version, draft.version


def first_state(states: list[dict[str, Any]] | None, done: Callable[[dict[str, Any]], bool]) -> float | None:
    """When (time.time() seconds) the DOM first showed a state `done` accepts; None: not yet."""
    if states is None:
        raise RuntimeError("the page was reloaded: the observer's log is gone")
    return next((float(s["t"]) / 1000 for s in states if done(s)), None)


def measure_routes(root: Path) -> dict[str, Any]:
    from e2e.console.console_support import chromium, log_in, wait_for

    admin, reader = new_token(), new_token()
    with tiny_stack(root, admin, reader) as state, chromium() as browser:
        url = state["console"]["url"].rstrip("/")
        workers = len([w for w in state["workers"] if w["deployment"] == DEPLOYMENT])
        with RegistryClient(state["registry"]["address"], token=admin) as registry:
            versions = second_version(registry)
            log_in(browser, url, admin)
            browser.get(f"{url}/deployments/{DEPLOYMENT}")
            rows = "return document.querySelectorAll('#live tr[data-worker]').length"
            wait_for(lambda: browser.execute_script(rows) == workers, timeout=60, what="every worker's row")
            browser.execute_script(OBSERVER)
            to_revision: list[float] = []
            to_serving: list[float] = []
            for i in range(CHANGES):
                target = versions[(i + 1) % 2]
                # Only the last state before the change stays: it shows an older revision.
                browser.execute_script("window.__states = window.__states.slice(-1);")
                changed = registry.set_routes(
                    pb.SetRoutesRequest(name=DEPLOYMENT, routes=[pb.Route(version=target, weight=100)])
                )
                returned = time.time()
                revision = changed.revision

                def shown(s: dict[str, Any], r: int = revision) -> bool:
                    return int(s["revision"]) >= r

                def served(s: dict[str, Any], r: int = revision, v: str = target) -> bool:
                    rows = s["rows"]
                    return len(rows) == workers and all(v in on and at >= r for on, at in rows)

                def both() -> tuple[float, float] | None:
                    states = browser.execute_script("return window.__states")
                    at_shown, at_served = first_state(states, shown), first_state(states, served)
                    return (at_shown, at_served) if at_shown is not None and at_served is not None else None

                found = wait_for(both, timeout=30, interval=0.1, what=f"revision {revision} served")
                assert found is not None  # wait_for returns a truthy result or fails
                at_shown, at_served = found
                # Date.now() counts whole milliseconds: a state within one of the return reads as 0.
                to_revision.append(max(0.0, at_shown - returned))
                to_serving.append(max(0.0, at_served - returned))
                time.sleep(1.0)  # the old version drains and unloads before the next change
    return {"revision": to_revision, "serving": to_serving, "workers": workers, "versions": versions}


def routes_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        "| route change (SetRoutes returned) → DOM | changes | p50 s | p95 s | max s | goal p95 ≤ 1 s |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (
        ("deployment card shows the new revision", "revision"),
        (f"all {result['workers']} worker rows serve the new version at that revision", "serving"),
    ):
        samples = result[key]
        p95 = pct(samples, 95)
        lines.append(
            f"| {name} | {len(samples)} | {pct(samples, 50):.3f} | {p95:.3f} | {max(samples):.3f} | "
            f"{'yes' if p95 <= DOM_GOAL_S else '**no**'} |"
        )
    return lines


# ---- the report ---------------------------------------------------------------------------------


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("catalog", "routes"), help="run one part, print, write nothing")
    args = parser.parse_args()
    root = make_postgres_dir()
    load_before = load_average()
    try:
        cases = catalog_part(root) if args.only != "routes" else []
        routes = measure_routes(root) if args.only != "catalog" else None
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = ["## Console", ""]
    lines += [
        f"Machine: {machine()}. Command: `make bench` (`tests/bench/bench_console.py`), commit {git_commit()}; "
        f"load average (1/5/15 min) {load_before} before, {load_average()} after (other engineers' work "
        "shares the machine).",
        "",
    ]
    if cases:
        lines += [
            f"Catalog: one registry process (tokens on) on an embedded PostgreSQL 16 with {VERSIONS:,} "
            "versions of 4 models, and `python -m modelyard.console` holding only the token's verifier. "
            "The client logs in over HTTP, keeps its cookie and one keep-alive connection, and sends "
            f"{WARMUP} unmeasured then {REQUESTS} measured GETs per case, one at a time. Round trip: "
            "request sent to body read, on localhost. Console's own: its `Server-Timing: app;dur=` "
            "(request in to response start: session, the page's two registry calls, rendering). "
            "Registry calls: ListModels + ListVersions of the same page with the same token, timed "
            "from the benchmark process right after each GET.",
            "",
            *catalog_lines(cases),
            "",
        ]
    if routes:
        first, second = routes["versions"]
        lines += [
            f"Route change → DOM: `modelyard up --tiny-text --text-workers 2` with admin and reader "
            "tokens; headless Chromium logged in on `/deployments/text-embedding`. "
            f"{CHANGES} SetRoutes through `modelyard.client`, alternating 100% between {first} and "
            f"{second} (the same tiny weights under two versions, so each change loads one), 1 s "
            "apart after each is served. A MutationObserver on the live region logs `Date.now()` on "
            "every DOM change; each latency runs from `time.time()` just after SetRoutes returned to "
            "the first logged state showing it (same clock, ms resolution). The console pushes a "
            "route change as soon as WatchDeployments reports it; worker state comes with heartbeats "
            "and is re-read every `live_interval_s` (0.5 s).",
            "",
            *routes_lines(routes),
        ]
    if routes:
        for key in ("revision", "serving"):
            print(f"route change -> {key}, each change (s):", " ".join(f"{x:.3f}" for x in routes[key]))
    body = "\n".join(lines)
    if args.only is None:
        write_section("console", body)
    print(body)


if __name__ == "__main__":
    main()
