"""Helpers the tests share: free ports, real server subprocesses, OIP/registry stubs."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_STARTED = re.compile(r"server\.started component=(\S+) address=(\S+) metrics_port=(\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A Modelyard server in its own process; `address` is known once it logged `server.started`."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        timeout: float = 60,
        python: str = sys.executable,
    ) -> None:
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.args = list(args)
        self.proc = subprocess.Popen(
            [python, *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=full_env,
            text=True,
        )
        self.lines: list[str] = []
        self.address = ""
        self.metrics_port = 0
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip())
                match = _STARTED.search(line)
                if match and not ready.is_set():
                    self.address = match.group(2)
                    self.metrics_port = int(match.group(3)) if match.group(3).isdigit() else 0
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or not self.address:
            self.kill()
            raise RuntimeError(f"{args} did not start:\n" + "\n".join(self.lines[-40:]))

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return "\n".join(self.lines)


def spawn_registry(database_url: str, *, port: int = 0, extra: Sequence[str] = ()) -> ServerProcess:
    return ServerProcess(
        [
            "-m",
            "modelyard.registry",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--database-url",
            database_url,
            "--poll-interval-s",
            "0.5",
            *extra,
        ]
    )


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


REPO_ROOT = Path(__file__).resolve().parents[1]


class PostgresInstance:
    # A start killed by a signal (one CI run saw pg_ctl die of SIGBUS once) is tried again; a
    # start that fails on its own (bad data directory, port) is not.
    START_ATTEMPTS = 3

    def __init__(self, data_dir: Path) -> None:
        import pgserver
        from pgserver.postgres_server import PostgresServer

        self.data_dir = data_dir
        for attempt in range(1, self.START_ATTEMPTS + 1):
            try:
                self.server = pgserver.get_server(data_dir, cleanup_mode="stop")
                return
            except subprocess.CalledProcessError as err:
                if err.returncode >= 0 or attempt == self.START_ATTEMPTS:
                    raise
                # pgserver keeps the instance that failed to start; drop it so the next try starts afresh.
                PostgresServer._instances.pop(data_dir.expanduser().resolve(), None)
                time.sleep(attempt)

    def url(self, database: str = "postgres") -> str:
        return str(self.server.get_uri(database))


def make_postgres_dir() -> Path:
    """A directory the unprivileged `pgserver` user can reach (pytest's tmp tree is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="modelyard-pg-"))
    path.chmod(0o755)
    return path


def git(repo: Path, *args: str) -> str:
    """`git -C repo ARGS` with a throwaway identity (tests' own repositories); its stdout, stripped."""
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def single_error_line(stderr: str) -> str:
    """A CLI user mistake gives exactly one `error: ...` line on stderr and no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]
