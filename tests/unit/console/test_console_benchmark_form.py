"""The Benchmark page's form check: what it sends the benchmark service for a good form, and the
one precise error, under the right field, for each kind of bad input."""

from __future__ import annotations

import pytest

from modelyard.api import benchmark_pb2 as bpb
from modelyard.api import registry_pb2 as rpb
from modelyard.console.benchmarks import Choices, FormValues, check_form, default_values


def _version(name: str, max_batch: int = 16) -> rpb.ModelVersion:
    return rpb.ModelVersion(
        model_id="tiny-text", version=name, inference_config=rpb.InferenceConfig(max_batch_size=max_batch)
    )


CHOICES = Choices(
    deployments=["image-embedding", "text-embedding"],
    deployment=rpb.Deployment(
        name="text-embedding",
        model_id="tiny-text",
        model_type=rpb.TEXT_EMBEDDING,
        routes=[rpb.Route(version="0.1.0", weight=100)],
    ),
    versions=[_version("0.1.0"), _version("0.2.0", max_batch=8)],
    suites=[
        bpb.Suite(name="digits", kind="image_embedding"),
        bpb.Suite(name="stdlib-docstrings", kind="text_retrieval"),
        bpb.Suite(name="load", kind="load"),
    ],
)


def _values(**changes: object) -> FormValues:
    values = FormValues(deployment="text-embedding", versions=["0.1.0"], suite="stdlib-docstrings")
    for name, value in changes.items():
        setattr(values, name, value)
    return values


def test_defaults_pick_the_routed_versions_and_a_suite_for_the_model() -> None:
    values = default_values(CHOICES)
    assert (values.deployment, values.versions, values.suite) == (
        "text-embedding",
        ["0.1.0"],
        "stdlib-docstrings",
    )


def test_a_quality_run_sends_limit_and_the_largest_batch_every_version_takes() -> None:
    errors, request, plan = check_form(
        _values(versions=["0.1.0", "0.2.0"], stage_unrouted=True, limit="40"), CHOICES, started_by="ops"
    )
    assert errors == {} and request is not None and plan is not None
    assert list(request.versions) == ["0.1.0", "0.2.0"] and request.stage_unrouted
    assert (request.deployment, request.model_id, request.suite) == (
        "text-embedding",
        "tiny-text",
        "stdlib-docstrings",
    )
    assert dict(request.options) == {"limit": "40", "batch_size": "8"}
    assert not request.HasField("load")
    assert plan.started_by == "ops" and ("limit", "40") in plan.settings


def test_a_load_run_sends_its_levels() -> None:
    errors, request, _ = check_form(
        _values(suite="load", concurrency="1, 4", requests="50", warmup_requests="0", batch_size="2"),
        CHOICES,
        started_by="ops",
    )
    assert errors == {} and request is not None
    assert request.load == bpb.LoadSettings(concurrency=[1, 4], requests=50, warmup_requests=0, batch_size=2)
    assert dict(request.options) == {}


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"versions": []}, "versions", "pick at least one version"),
        ({"versions": ["0.1.0", "0.1.0"]}, "versions", "picked twice"),
        ({"versions": ["9.9.9"]}, "versions", "9.9.9: not a ready version of model tiny-text"),
        ({"versions": ["0.2.0"]}, "versions", "stage unrouted versions"),
        ({"deployment": "gone"}, "deployment", "no deployment named 'gone'"),
        ({"suite": "nope"}, "suite", "unknown suite 'nope'; pick one of: digits, stdlib-docstrings, load"),
        ({"concurrency": "0"}, "concurrency", "'0': give concurrent clients as whole numbers from 1 to 256"),
        ({"concurrency": "1,x"}, "concurrency", "comma-separated"),
        ({"concurrency": "2,2"}, "concurrency", "a level repeats"),
        ({"concurrency": ",".join(str(i) for i in range(1, 10))}, "concurrency", "at most 8"),
        ({"requests": "0"}, "requests", "'0' is not a whole number from 1 to 100000"),
        ({"requests": "²"}, "requests", "'²' is not a whole number"),
        ({"warmup_requests": "-1"}, "warmup_requests", "from 0 to 10000"),
        ({"limit": "1.5"}, "limit", "'1.5' is not a whole number"),
        ({"batch_size": "17"}, "batch_size", "from 1 to 16, the largest batch every picked version accepts"),
    ],
)
def test_bad_input_gets_one_error_under_its_field(changes: dict[str, object], field: str, says: str) -> None:
    errors, request, plan = check_form(_values(**changes), CHOICES, started_by="ops")
    assert list(errors) == [field], errors
    assert says in errors[field]
    assert request is None and plan is None


def test_an_unrouted_version_is_fine_when_staging_is_asked_for() -> None:
    errors, request, _ = check_form(
        _values(versions=["0.2.0"], stage_unrouted=True), CHOICES, started_by="ops"
    )
    assert errors == {} and request is not None and request.stage_unrouted
