"""`modelyard up` as the end-to-end tests and benchmarks start it: a process of its own with its
output in a log file (a pipe that nobody reads fills up and blocks it), ready once it wrote its
stack.json (and, when asked, printed `ready_text`), stopped with SIGTERM, then SIGKILL, at the end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class UpStack:
    """What a test of a running `modelyard up` calls: the CLI with the stack's environment."""

    env: dict[str, str]  # MODELYARD_REGISTRY, the token and the CA file of the stack
    state: dict[str, Any]  # stack.json

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "modelyard.cli.main", *args],
            env=self.env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if check:
            assert done.returncode == 0, f"modelyard {' '.join(args)} -> {done.returncode}\n{done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        """`modelyard --json ARGS`, parsed."""
        return json.loads(self.cli("--json", *args).stdout)


@dataclass
class RunningUp:
    process: subprocess.Popen[str]
    state: dict[str, Any]  # stack.json: addresses, URLs, the CA file with --tls
    log: Path  # everything `up` printed


@contextmanager
def modelyard_up(
    root: Path, env: dict[str, str], *args: str, timeout_s: float = 300, ready_text: str = ""
) -> Iterator[RunningUp]:
    """`modelyard up --data-dir ROOT/stack` on free ports with `args`; fails with the tail of its
    output when it does not come up within `timeout_s`."""
    log = root / "up.log"
    state_file = root / "stack" / "stack.json"
    with log.open("w", encoding="utf-8") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "modelyard.cli.main", "up", "--data-dir", str(root / "stack"),
             "--registry-port", "0", "--benchmark-port", "0", "--console-port", "0", *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s

        def ready() -> bool:
            return state_file.exists() and (not ready_text or ready_text in log.read_text(errors="replace"))

        while not ready() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if not ready():
            tail = log.read_text(errors="replace")[-6000:]
            raise RuntimeError(f"modelyard up did not come up (exit {up.poll()}):\n{tail}")
        yield RunningUp(up, json.loads(state_file.read_text()), log)
    finally:
        if up.poll() is None:
            up.terminate()
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
