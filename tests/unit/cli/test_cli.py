"""The `modelyard` command line without servers: parsing, one-line errors and exit codes, formatting,
the artifact store and loader detection."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from support import free_port, single_error_line

from modelyard.api import registry_pb2 as rpb
from modelyard.cli import importer
from modelyard.cli.bench import export_run, metric_matrix
from modelyard.cli.demo import _bucket_quantile
from modelyard.cli.errors import (
    EXIT_FAILED,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
    from_client_error,
)
from modelyard.cli.main import cli, main
from modelyard.cli.parsing import parse_key_values, parse_routes, semver
from modelyard.common.errors import error_for_status
from modelyard.inference.artifacts import checkpoint_hash


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


# ---- parsing ---------------------------------------------------------------------------------------


def test_routes_parse_version_weight_pairs() -> None:
    routes = parse_routes(["1.0.0=90", "1.1.0=10", "2.0.0-rc.1=0"])
    assert [(r.version, r.weight) for r in routes] == [("1.0.0", 90), ("1.1.0", 10), ("2.0.0-rc.1", 0)]


@pytest.mark.parametrize("bad", ["1.0.0", "1.0.0=", "=50", "1.0.0=ten", "1.0.0=-5"])
def test_malformed_route_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="VERSION=WEIGHT"):
        parse_routes([bad])


def test_tags_parse_with_and_without_values() -> None:
    assert parse_key_values(["team=search", "demo", " k = v "]) == {"team": "search", "demo": "", "k": "v"}
    with pytest.raises(UsageError):
        parse_key_values(["=x"])


def test_semver_is_checked_locally() -> None:
    assert semver("2.0.0-rc.1") == "2.0.0-rc.1"
    with pytest.raises(UsageError, match="SemVer"):
        semver("1.0")


# ---- errors and exit codes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "details", "exit_code", "says"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses",
            EXIT_UNREACHABLE,
            "is `modelyard up` running",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "database unreachable; nothing changed",
            EXIT_UNREACHABLE,
            "database unreachable",
        ),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", EXIT_UNREACHABLE, "raise --timeout"),
        (grpc.StatusCode.NOT_FOUND, "unknown deployment 'x'", EXIT_REFUSED, "unknown deployment 'x'"),
        (grpc.StatusCode.FAILED_PRECONDITION, "gate\nfailed", EXIT_REFUSED, "gate failed"),
        (grpc.StatusCode.UNAUTHENTICATED, "no token", EXIT_REFUSED, "MODELYARD_TOKEN"),
        (grpc.StatusCode.INTERNAL, "request id 7", EXIT_FAILED, "INTERNAL"),
    ],
)
def test_failed_calls_map_to_one_line_and_exit_code(
    code: grpc.StatusCode, details: str, exit_code: int, says: str
) -> None:
    failure = error_for_status(code, details, request_id="7")
    error = from_client_error(failure, service="registry", address="h:1", timeout_s=10)
    assert error.exit_code == exit_code
    assert says in error.message
    assert "\n" not in error.message


def test_registry_not_running_exits_4_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    code, out, err = run_main(capsys, "--registry", address, "deployments", "list")
    assert code == EXIT_UNREACHABLE
    line = single_error_line(err)
    assert f"registry at {address} is not reachable" in line and "modelyard up" in line
    assert out == ""


def test_unknown_option_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "deployments", "list", "--no-such-flag")
    assert code == EXIT_USAGE
    assert "--no-such-flag" in single_error_line(err)


def test_malformed_route_exits_2_before_contacting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    # The registry address is unreachable: exit 2 proves the mistake was caught first.
    code, _, err = run_main(
        capsys, "--registry", f"127.0.0.1:{free_port()}", "deployments", "set-routes", "d", "1.0.0=lots"
    )
    assert code == EXIT_USAGE
    assert "VERSION=WEIGHT" in single_error_line(err)


def test_import_of_missing_directory_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_main(
        capsys, "models", "import", str(tmp_path / "nope"), "--model", "m", "--version", "1.0.0"
    )
    assert code == EXIT_USAGE
    assert "no model at" in single_error_line(err)


def test_import_with_bad_version_exits_2_before_hashing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    code, _, err = run_main(
        capsys,
        "--registry",
        f"127.0.0.1:{free_port()}",
        "models",
        "import",
        str(tmp_path),
        "--model",
        "m",
        "--version",
        "1.x",
        "--loader",
        "sentence-transformers",
    )
    assert code == EXIT_USAGE
    assert "invalid version '1.x'" in single_error_line(err)


# ---- commands that need no server ------------------------------------------------------------------


def test_models_hash_prints_the_checkpoint_hash(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"\0" * 10)
    code, out, _ = run_main(capsys, "models", "hash", str(tmp_path))
    assert code == 0 and out.strip() == checkpoint_hash(tmp_path)
    code, out, _ = run_main(capsys, "models", "hash", str(tmp_path), "--json")
    assert json.loads(out) == {"path": str(tmp_path), "checkpoint_hash": checkpoint_hash(tmp_path)}


def test_every_command_group_has_help() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for group in ("up", "models", "deployments", "bench", "registry", "worker", "benchmark"):
        assert group in result.output
    for args in (
        ["models", "import", "--help"],
        ["deployments", "promote", "--help"],
        ["bench", "run", "--help"],
        ["worker", "serve", "--help"],
        ["registry", "serve", "--help"],
        ["benchmark", "serve", "--help"],
    ):
        assert runner.invoke(cli, args).exit_code == 0, args


def test_serve_flags_map_to_settings_fields() -> None:
    """Every flag of `worker serve` names a WorkerSettings field (a typo would be silently ignored)."""
    from modelyard.benchmark.settings import BenchmarkSettings
    from modelyard.cli.serve import benchmark_serve, registry_serve, worker_serve
    from modelyard.inference.settings import WorkerSettings
    from modelyard.registry.settings import RegistrySettings

    for command, settings in (
        (worker_serve, WorkerSettings),
        (registry_serve, RegistrySettings),
        (benchmark_serve, BenchmarkSettings),
    ):
        for param in command.params:
            # `--json` is the CLI's output switch (JSON logs), not a settings field.
            if param.name not in ("help", "as_json"):
                assert param.name in settings.model_fields, (command.name, param.name)


# ---- artifact store and loader detection -----------------------------------------------------------


def test_artifact_store_copies_by_hash_and_keeps_the_hash(tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "nested").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "nested" / "weights.bin").write_bytes(bytes(range(256)) * 4000)
    digest = checkpoint_hash(source)
    store = importer.ArtifactStore(str(tmp_path / "store"))
    seen: list[int] = []
    uri = store.put(source, digest, lambda done, total: seen.append(done))
    stored = tmp_path / "store" / digest
    assert uri == f"file://{stored}"
    assert checkpoint_hash(stored) == digest
    assert seen[-1] == importer.artifact_size(source)
    (source / "config.json").write_text('{"changed": true}')  # a complete entry is never rewritten
    assert store.put(source, digest) == uri
    assert checkpoint_hash(stored) == digest
    assert not [p for p in (tmp_path / "store").iterdir() if "partial" in p.name]


def test_artifact_store_keeps_a_single_file_under_its_name(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    digest = checkpoint_hash(weights)
    uri = importer.ArtifactStore(f"file://{tmp_path / 'store'}").put(weights, digest)
    assert uri == f"file://{tmp_path / 'store' / digest / 'model.safetensors'}"
    assert checkpoint_hash(tmp_path / "store" / digest / "model.safetensors") == digest


@pytest.mark.parametrize(
    ("files", "loader"),
    [
        ({"modules.json": "[]"}, "sentence-transformers"),
        ({"open_clip_config.json": "{}"}, "open-clip"),
        ({"config.json": '{"model_type": "vision-encoder-decoder"}'}, "hf-captioning"),
        ({"config.json": '{"architectures": ["BlipForConditionalGeneration"]}'}, "hf-captioning"),
    ],
)
def test_loader_is_detected_from_the_model_files(tmp_path: Path, files: dict[str, str], loader: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert importer.detect_loader(tmp_path) == loader


def test_unknown_layout_asks_for_loader(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match="--loader"):
        importer.detect_loader(tmp_path)


def test_model_type_follows_the_signature() -> None:
    text = rpb.Signature(inputs=[rpb.TensorSpec(name="text")], outputs=[rpb.TensorSpec(name="embedding")])
    clip = rpb.Signature(
        inputs=[rpb.TensorSpec(name="image"), rpb.TensorSpec(name="text")],
        outputs=[rpb.TensorSpec(name="embedding")],
    )
    caption = rpb.Signature(inputs=[rpb.TensorSpec(name="image")], outputs=[rpb.TensorSpec(name="caption")])
    assert importer.model_type_for(text) == rpb.TEXT_EMBEDDING
    assert importer.model_type_for(clip) == rpb.IMAGE_EMBEDDING
    assert importer.model_type_for(caption) == rpb.CAPTIONING


# ---- formatting ------------------------------------------------------------------------------------


def _run(version: str, run_id: str, **metrics: float) -> rpb.BenchmarkRun:
    return rpb.BenchmarkRun(
        run_id=run_id,
        version=version,
        model_id="m",
        suite="s",
        metrics=[rpb.Metric(name=k.replace("_at_", "@"), value=v, unit="") for k, v in metrics.items()],
    )


def test_metric_matrix_lines_up_metrics_across_runs() -> None:
    headers, rows = metric_matrix(
        [_run("1.0.0", "aaaaaaaa11", recall_at_10=0.9), _run("1.1.0", "bbbbbbbb22", mrr_at_10=0.5)]
    )
    assert headers == ["1.0.0 (aaaaaaaa)", "1.1.0 (bbbbbbbb)"]
    assert rows == [["recall@10", "0.9000", "-"], ["mrr@10", "-", "0.5000"]]


def test_run_export_formats() -> None:
    run = _run("1.0.0", "r1", recall_at_10=0.875)
    assert "recall@10,0.875" in export_run(run, "csv")
    assert "| recall@10 | 0.8750 |" in export_run(run, "markdown")
    assert json.loads(export_run(run, "json"))["metrics"][0]["name"] == "recall@10"


def test_json_output_of_commands_is_parseable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    code, out, _ = run_main(capsys, "--json", "models", "hash", str(tmp_path / "f"))
    assert code == 0 and json.loads(out)["checkpoint_hash"] == checkpoint_hash(tmp_path / "f")


def test_histogram_quantile_interpolates_inside_buckets() -> None:
    cumulative = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert _bucket_quantile(0.5, cumulative) == pytest.approx(0.01)
    assert _bucket_quantile(0.7, cumulative) == pytest.approx(0.01 + 0.09 * 0.5)
    assert _bucket_quantile(0.99, cumulative) == pytest.approx(0.1 + 0.9 * 0.9)
