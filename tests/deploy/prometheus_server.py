"""A real Prometheus server for tests: started on a free port with deploy/prometheus/prometheus.yml
rewritten to scrape given addresses every second, and queried through its HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PromQLError(RuntimeError):
    """Prometheus answered a query with an error (bad syntax, bad types, ...)."""


@dataclass
class PrometheusServer:
    """One running Prometheus process; use `start()` and `stop()` (or the `running` context)."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @classmethod
    def start(
        cls,
        binary: str,
        *,
        config: Path,
        targets: Mapping[str, Sequence[str]],
        workdir: Path,
        rules: Path | None = None,
        interval_s: int = 1,
        ready_timeout_s: float = 30.0,
    ) -> PrometheusServer:
        """Start `binary` with `config`'s scrape jobs, each scraping `targets[job_name]`
        (jobs missing from `targets` are dropped), evaluating `rules` if given."""
        document = yaml.safe_load(config.read_text())
        document["global"] = {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"}
        document["rule_files"] = [str(rules)] if rules else []
        jobs = []
        for job in document["scrape_configs"]:
            addresses = list(targets.get(job["job_name"], ()))
            if not addresses:
                continue
            for key in [k for k in job if k.endswith("_sd_configs")]:
                del job[key]
            job["static_configs"] = [{"targets": addresses}]
            job["scrape_timeout"] = f"{interval_s}s"
            jobs.append(job)
        unknown = set(targets) - {job["job_name"] for job in document["scrape_configs"]}
        if unknown:
            raise ValueError(f"no scrape job named {sorted(unknown)} in {config}")
        document["scrape_configs"] = jobs
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(document))
        port = free_port()
        log_path = workdir / "prometheus.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = cls(process, f"http://127.0.0.1:{port}", log_path)
        try:
            server.wait_ready(ready_timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant query now; the series as `{"metric": labels, "value": [t, v]}`.
        Raises PromQLError when Prometheus rejects the expression."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PromQLError(f"{expr!r} gives a {data['resultType']}, not an instant vector")
        return list(data["result"])

    def active_targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def query(server: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    """Module-level shorthand for `server.query(expr)`."""
    return server.query(expr)
