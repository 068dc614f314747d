"""`python -m modelyard.benchmark`: run the benchmark service until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from modelyard.benchmark.server import BenchmarkServer
from modelyard.benchmark.settings import BenchmarkSettings
from modelyard.common.log import configure_logging
from modelyard.common.server import freeze_startup_objects, wait_for_shutdown_signal


def parse_args(argv: list[str] | None = None) -> BenchmarkSettings:
    parser = argparse.ArgumentParser(prog="python -m modelyard.benchmark", description=__doc__)
    parser.add_argument("--registry", help="registry HOST:PORT; without it runs are kept in memory")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--worker-timeout-s", type=float)
    parser.add_argument("--registry-timeout-s", type=float)
    parser.add_argument("--stage-timeout-s", type=float)
    parser.add_argument(
        "--dataset-dir",
        action="append",
        dest="dataset_dirs",
        help="directory beir: suites may read (repeatable)",
    )
    parser.add_argument("--grace-period-s", type=float)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    return BenchmarkSettings(**overrides)


async def serve(settings: BenchmarkSettings) -> None:
    server = BenchmarkServer(settings)
    await server.start()
    freeze_startup_objects()
    try:
        await wait_for_shutdown_signal()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
