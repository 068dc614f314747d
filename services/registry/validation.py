"""Input rules of the registry: names, SemVer, checkpoint hashes, route weights, promotion gates,
heartbeat counters."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from modelyard.common.artifact_roots import ArtifactLocationError, ArtifactRoots
from modelyard.common.drift import DRIFT_BINS, SIGNALS
from modelyard.common.errors import InvalidArgument
from modelyard.common.latency import BUCKET_COUNT
from modelyard.common.modelspec import ENGINES, Signature
from modelyard.common.states import RunStatus
from modelyard.registry.domain import MODEL_TYPES, BenchmarkRun, LiveCounters, Model, ModelVersion, Route

# SemVer 2.0.0, as published at semver.org.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_GATE = re.compile(r"^\s*([A-Za-z][\w@./:-]*)\s*(>=|<=|==|>|<)\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}


def check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise InvalidArgument(
            f"invalid {kind} {value!r}: use 1-63 lower-case letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_semver(version: str) -> str:
    if not _SEMVER.match(version):
        raise InvalidArgument(
            f"invalid version {version!r}: versions are SemVer, MAJOR.MINOR.PATCH with optional "
            "-prerelease and +build (e.g. 1.2.0 or 2.0.0-rc.1)"
        )
    return version


def check_checkpoint_hash(value: str) -> str:
    if not _SHA256.match(value):
        raise InvalidArgument(
            f"invalid checkpoint_hash {value!r}: expected the sha256 of the artifact as 64 lower-case "
            "hex digits (`modelyard models import` computes it)"
        )
    return value


def check_source_uri(uri: str, roots: ArtifactRoots) -> str:
    """`uri` normalised, when it lies inside an artifact root (see modelyard.common.artifact_roots)."""
    try:
        return roots.check(uri)
    except ArtifactLocationError as exc:
        raise InvalidArgument(str(exc)) from None


def check_model_type(value: str) -> str:
    if value not in MODEL_TYPES:
        raise InvalidArgument(f"invalid model type {value!r}: expected one of {', '.join(MODEL_TYPES)}")
    return value


def check_model(model: Model) -> Model:
    """What CreateModel and an imported model must satisfy."""
    check_name("model_id", model.model_id)
    check_model_type(model.model_type)
    return model


def check_version(version: ModelVersion) -> ModelVersion:
    """What RegisterVersion and an imported version must satisfy, before any lookup."""
    check_name("model_id", version.model_id)
    check_semver(version.version)
    check_checkpoint_hash(version.checkpoint_hash)
    if not version.source_uri:
        raise InvalidArgument("source_uri is required: where the artifact lives (a path or fsspec URL)")
    if not version.loader:
        raise InvalidArgument(
            "loader is required: the model family, e.g. sentence-transformers, open-clip, hf-captioning"
        )
    cfg = version.inference_config
    if cfg.max_batch_size < 0 or cfg.max_delay_ms < 0 or cfg.max_batch_tokens < 0:
        raise InvalidArgument(
            "inference_config.max_batch_size, max_delay_ms and max_batch_tokens must not be negative"
        )
    if cfg.engine not in ENGINES:
        raise InvalidArgument(
            f"inference_config.engine {cfg.engine!r} is unknown; use {' or '.join(ENGINES)}"
        )
    if cfg.engine != "torch" and version.loader != "sentence-transformers":
        raise InvalidArgument(
            f"inference_config.engine {cfg.engine} runs sentence-transformers versions only; "
            f"this one uses {version.loader}"
        )
    if version.lineage.parent_version:
        check_semver(version.lineage.parent_version)
    if version.signature is not None:
        check_signature_parameters(version.signature)
    return version


# What a signature's request parameters may hold: a model's prompts, not a document store.
MAX_PARAMETER_CHOICES = 64
MAX_PARAMETER_TEXT = 2048


def check_signature_parameters(signature: Signature) -> None:
    choices = [(p.name, value, meaning) for p in signature.parameters for value, meaning in p.choices]
    if len(choices) > MAX_PARAMETER_CHOICES:
        raise InvalidArgument(
            f"signature.parameters lists {len(choices)} choices; at most {MAX_PARAMETER_CHOICES}"
        )
    for name, value, meaning in choices:
        if len(name) + len(value) > 128 or len(meaning) > MAX_PARAMETER_TEXT:
            raise InvalidArgument(
                f"signature.parameters {name}.choice.{value[:32]}: names take at most 128 characters "
                f"and each meaning at most {MAX_PARAMETER_TEXT}"
            )


def check_run(run: BenchmarkRun) -> BenchmarkRun:
    """What RecordBenchmarkRun and an imported run must satisfy, before any lookup."""
    if not run.run_id or not run.suite:
        raise InvalidArgument("a benchmark run needs run_id and suite")
    if run.status not in tuple(RunStatus):
        raise InvalidArgument("run status must be running, succeeded or failed")
    names = [m.name for m in run.metrics]
    if len(names) != len(set(names)):
        raise InvalidArgument("a run lists each metric once")
    return run


def check_routes(routes: Sequence[Route]) -> list[Route]:
    """Weights are integers 0..100 summing to 100, each version once, at least one serving route;
    at most one route mirrors (shadow traffic), a weight-0 one, 1..100 percent."""
    if not routes:
        raise InvalidArgument(
            "a deployment needs at least one route: give version=weight pairs summing to 100"
        )
    seen: set[str] = set()
    for route in routes:
        check_semver(route.version)
        if route.version in seen:
            raise InvalidArgument(f"version {route.version} appears twice in the routes; list it once")
        seen.add(route.version)
        if not 0 <= route.weight <= 100:
            raise InvalidArgument(
                f"weight {route.weight} for version {route.version} is out of range: weights are 0..100"
            )
        if not 0 <= route.mirror_percent <= 100:
            raise InvalidArgument(
                f"mirror percent {route.mirror_percent} for version {route.version} is out of range: 0..100"
            )
        if route.mirror_percent and route.weight:
            raise InvalidArgument(
                f"version {route.version} carries {route.weight}% of the traffic and cannot also be a "
                "shadow; mirror only to a weight-0 (staged) version"
            )
    shadows = [r.version for r in routes if r.mirror_percent]
    if len(shadows) > 1:
        raise InvalidArgument(f"versions {', '.join(shadows)} all mirror traffic; one shadow at a time")
    total = sum(r.weight for r in routes)
    if total != 100:
        shown = ", ".join(f"{r.version}={r.weight}" for r in routes)
        raise InvalidArgument(
            f"route weights sum to {total}, not 100 ({shown}); weight 0 stages a version without traffic"
        )
    return list(routes)


@dataclass(frozen=True)
class Gate:
    text: str
    metric: str
    op: str
    threshold: float

    def passes(self, observed: float) -> bool:
        return _OPS[self.op](observed, self.threshold)


def parse_comparison(text: str, *, what: str, example: str) -> Gate:
    """`metric op number`, as gates and rollout guards are written."""
    match = _GATE.match(text)
    if not match or not math.isfinite(float(match.group(3))):
        raise InvalidArgument(
            f"invalid {what} {text!r}: write `metric op number`, e.g. `{example}` "
            "(op is one of >=, >, <=, <, ==)"
        )
    return Gate(text.strip(), match.group(1), match.group(2), float(match.group(3)))


def parse_gate(text: str) -> Gate:
    return parse_comparison(text, what="gate", example="recall@10 >= 0.80")


# Series one heartbeat may carry: far above what a worker loads, low enough that a bad report cannot
# make a worker's row (and every history snapshot) huge.
MAX_COUNTER_SERIES = 256
_STATUS_CODES = frozenset(code.name for code in grpc.StatusCode)


def check_live_counters(counters: LiveCounters) -> LiveCounters:
    """Counters the live window can difference: finite times, non-negative counts, one bucket more
    than the bounds of modelyard.common.latency, errors keyed by gRPC status code names."""
    problem = ""
    if not (math.isfinite(counters.uptime_s) and counters.uptime_s >= 0):
        problem = f"uptime_s is {counters.uptime_s}"
    elif counters.started_at_ns <= 0:
        problem = "started_at is unset"
    elif len(counters.series) > MAX_COUNTER_SERIES:
        problem = f"{len(counters.series)} versions are more than {MAX_COUNTER_SERIES}"
    for s in counters.series:
        if problem:
            break
        name = f"{s.deployment} {s.version}"
        if not (math.isfinite(s.since_s) and 0 <= s.since_s <= counters.uptime_s):
            problem = f"{name}: since_s {s.since_s} is not between 0 and uptime_s {counters.uptime_s}"
        elif len(s.buckets) != BUCKET_COUNT:
            problem = (
                f"{name}: {len(s.buckets)} latency buckets, expected {BUCKET_COUNT} "
                "(modelyard.common.latency: do the worker and the registry run the same release?)"
            )
        elif (
            min(s.requests, s.items, s.shadow_requests, s.agreement_items, *s.buckets, *s.errors.values()) < 0
        ):
            problem = f"{name}: a counter is negative"
        elif not (math.isfinite(s.latency_sum_s) and s.latency_sum_s >= 0):
            problem = f"{name}: latency_sum_s is {s.latency_sum_s}"
        elif s.shadow_requests > s.requests:
            problem = f"{name}: shadow_requests {s.shadow_requests} exceed requests {s.requests}"
        elif not (math.isfinite(s.agreement_sum) and abs(s.agreement_sum) <= s.agreement_items):
            problem = f"{name}: agreement_sum {s.agreement_sum} is not within ±agreement_items"
        elif unknown := sorted(set(s.errors) - _STATUS_CODES):
            problem = f"{name}: errors keyed by {', '.join(unknown)}, not gRPC status code names"
        elif unknown := sorted(set(s.drift) - set(SIGNALS)):
            problem = f"{name}: unknown drift signal(s) {', '.join(unknown)}; known: {', '.join(SIGNALS)}"
        elif any(len(ref) != DRIFT_BINS or len(live) != DRIFT_BINS for ref, live in s.drift.values()):
            problem = f"{name}: a drift histogram does not have {DRIFT_BINS} bins"
        elif any(min(*ref, *live) < 0 for ref, live in s.drift.values()):
            problem = f"{name}: a drift count is negative"
    if problem:
        raise InvalidArgument(f"invalid live counters in the status report: {problem}; nothing was stored")
    return counters
