"""One entry point per service: `python -m modelyard.<service>` runs the command `modelyard <service>
serve` defines, so both take the same flags, print the same help and refuse the same mistakes (one
line, exit 2); every settings field has a flag or is documented as environment-only."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import click
import pydantic
import pytest
from support import single_error_line

from modelyard.benchmark.settings import BenchmarkSettings
from modelyard.cli.errors import EXIT_USAGE
from modelyard.cli.serve import ENV_ONLY, benchmark_serve, build_settings, registry_serve, worker_serve
from modelyard.inference.settings import WorkerSettings
from modelyard.registry.settings import RegistrySettings

# (module run by `python -m`, CLI group, the serve command, its settings class)
SERVICES = [
    ("modelyard.registry", "registry", registry_serve, RegistrySettings),
    ("modelyard.inference", "worker", worker_serve, WorkerSettings),
    ("modelyard.benchmark", "benchmark", benchmark_serve, BenchmarkSettings),
]
IDS = [group for _, group, _, _ in SERVICES]


def python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A fixed width, so that both spellings wrap their help alike whatever the terminal.
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("module", "group", "command", "settings"), SERVICES, ids=IDS)
def test_python_m_and_serve_print_the_same_help(
    module: str, group: str, command: click.Command, settings: type[pydantic.BaseModel]
) -> None:
    alone = python("-m", module, "--help")
    served = python("-m", "modelyard.cli.main", group, "serve", "--help")
    assert alone.returncode == 0 and served.returncode == 0, alone.stderr + served.stderr
    alone_usage, *alone_rest = alone.stdout.splitlines()
    served_usage, *served_rest = served.stdout.splitlines()
    assert alone_usage == f"Usage: python -m {module} [OPTIONS]"
    assert served_usage == f"Usage: modelyard {group} serve [OPTIONS]"
    assert alone_rest == served_rest
    # Every option of the command is in that help (`-h` too, as under `modelyard`).
    for param in command.params:
        for flag in param.opts + param.secondary_opts:
            assert f"{flag} " in alone.stdout or f"{flag}\n" in alone.stdout, flag
    assert "-h, --help" in alone.stdout


@pytest.mark.parametrize(("module", "group", "command", "settings"), SERVICES, ids=IDS)
def test_every_settings_field_has_a_flag_or_is_documented_as_env_only(
    module: str, group: str, command: click.Command, settings: type[pydantic.BaseModel]
) -> None:
    flags = {param.name for param in command.params} - {"help", "as_json"}
    fields = set(settings.model_fields)
    assert flags <= fields, flags - fields  # a flag no field takes would be ignored silently
    assert fields - flags == set(ENV_ONLY), fields - flags
    with click.Context(command, info_name=f"python -m {module}") as ctx:
        text = " ".join(command.get_help(ctx).split())
    for variable in ENV_ONLY.values():
        assert variable in text, variable
    assert "Environment only, on purpose" in text


def _settings(command: click.Command, settings: type[Any], args: list[str]) -> Any:
    with command.make_context("test", args) as ctx:
        return build_settings(settings, ctx.params)


def test_flags_reach_their_settings_fields() -> None:
    """The flags of the three commands land in the fields they name, with the fields' types."""
    registry = _settings(
        registry_serve,
        RegistrySettings,
        # what tests/support.py's spawn_registry and `modelyard up` pass, plus flags that are new
        [*("--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--poll-interval-s", "0.5"),
         *("--database-url", "postgresql://db/modelyard", "--data-dir", "/srv/pg", "--pool-max-size", "3"),
         *("--heartbeat-interval-ms", "250", "--lost-worker-window-s", "9", "--startup-timeout-s", "7"),
         *("--database-check-interval-s", "2", "--artifact-roots", "file:///srv/models/"),
         *("--rollout-poll-interval-s", "0.25"),
         *("--tls-cert-file", "/etc/c.pem", "--tls-key-file", "/etc/k.pem", "--max-message-bytes", "1024")],
    )  # fmt: skip
    assert (registry.port, registry.metrics_port, registry.poll_interval_s) == (0, 0, 0.5)
    assert (registry.database_url, str(registry.data_dir)) == ("postgresql://db/modelyard", "/srv/pg")
    assert (registry.pool_max_size, registry.heartbeat_interval_ms, registry.lost_worker_window_s) == (
        3,
        250,
        9,
    )
    assert (registry.startup_timeout_s, registry.database_check_interval_s) == (7, 2)
    assert registry.rollout_poll_interval_s == 0.25
    assert registry.artifact_roots == "file:///srv/models/"
    assert (registry.tls_cert_file, registry.tls_key_file, registry.max_message_bytes) == (
        "/etc/c.pem", "/etc/k.pem", 1024,
    )  # fmt: skip

    worker = _settings(
        worker_serve,
        WorkerSettings,
        # what tests/worker_support.py's start_worker and `modelyard up` pass, plus flags that are new
        [*("--port", "0", "--metrics-port", "0", "--registry", "127.0.0.1:1", "--cache-dir", "/c"),
         *("--grace-period-s", "5", "--deployment", "a", "--deployment", "b", "--worker-id", "w-1"),
         *("--cache-max-bytes", "1GiB", "--cache-full-verify", "--no-preimport", "--allow-remote-code"),
         *("--max-items-in-flight", "64", "--retry-max-s", "4", "--applied-state-file", ""),
         *("--artifact-roots", "file:///srv/models/,s3://bucket/m/", "--fallback-after-s", "0.5")],
    )  # fmt: skip
    assert (worker.registry, worker.cache_dir, worker.grace_period_s) == ("127.0.0.1:1", "/c", 5)
    assert (worker.deployments, worker.worker_id) == (["a", "b"], "w-1")
    assert worker.cache_max_bytes == 1024**3 and worker.cache_full_verify and worker.allow_remote_code
    assert not worker.preimport
    assert (worker.max_items_in_flight, worker.retry_max_s, worker.applied_state_file) == (64, 4, "")
    assert (worker.artifact_roots, worker.fallback_after_s) == ("file:///srv/models/,s3://bucket/m/", 0.5)
    # Flags left out keep the defaults (a boolean flag absent is not False).
    plain = _settings(worker_serve, WorkerSettings, [])
    assert plain.preimport and not plain.allow_remote_code and plain.deployments == []

    bench = _settings(
        benchmark_serve,
        BenchmarkSettings,
        [*("--registry", "127.0.0.1:1", "--port", "0", "--dataset-dir", "/d1", "--dataset-dir", "/d2"),
         *("--stage-timeout-s", "30", "--worker-timeout-s", "6", "--registry-timeout-s", "3")],
    )  # fmt: skip
    assert (bench.registry, bench.dataset_dirs, bench.stage_timeout_s) == ("127.0.0.1:1", ["/d1", "/d2"], 30)
    assert (bench.worker_timeout_s, bench.registry_timeout_s) == (6, 3)


@pytest.mark.parametrize(("module", "group", "command", "settings"), SERVICES, ids=IDS)
def test_unknown_flag_exits_2_with_one_line(
    module: str, group: str, command: click.Command, settings: type[pydantic.BaseModel]
) -> None:
    result = python("-m", module, "--no-such-flag")
    assert result.returncode == EXIT_USAGE, result.stderr
    line = single_error_line(result.stderr)
    assert "--no-such-flag" in line and f"python -m {module} --help" in line


@pytest.mark.parametrize(
    ("module", "group", "args", "words"),
    [
        ("modelyard.registry", "registry", ["--port", "fifty"], ["'--port'", "'fifty'"]),
        ("modelyard.inference", "worker", ["--instances", "-1"], ["invalid settings: instances"]),
        (
            "modelyard.inference",
            "worker",
            ["--cache-max-bytes", "lots"],
            ["invalid settings: cache_max_bytes"],
        ),
        ("modelyard.benchmark", "benchmark", ["--log-format", "xml"], ["'--log-format'", "'xml'"]),
    ],
)
def test_a_bad_value_is_refused_alike_by_both_spellings(
    module: str, group: str, args: list[str], words: list[str]
) -> None:
    """Validation is the same command's: the same one line, exit 2, before anything starts."""
    alone = python("-m", module, *args)
    served = python("-m", "modelyard.cli.main", group, "serve", *args)
    assert alone.returncode == served.returncode == EXIT_USAGE, alone.stderr + served.stderr
    alone_line, served_line = single_error_line(alone.stderr), single_error_line(served.stderr)
    assert alone_line == served_line.replace(f"modelyard {group} serve", f"python -m {module}")
    for word in words:
        assert word in alone_line, alone_line
