"""`python -m modelyard.inference`: run one inference worker until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from modelyard.common.log import configure_logging
from modelyard.common.server import wait_for_shutdown_signal
from modelyard.inference.settings import WorkerSettings
from modelyard.inference.worker import InferenceWorker


def parse_args(argv: list[str] | None = None) -> WorkerSettings:
    parser = argparse.ArgumentParser(prog="python -m modelyard.inference", description=__doc__)
    parser.add_argument("--registry", help="registry HOST:PORT")
    parser.add_argument("--deployment", action="append", dest="deployments", help="deployment to serve")
    parser.add_argument("--static-deployments", help="JSON list of Deployment messages to serve")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--cache-dir")
    parser.add_argument("--worker-id")
    parser.add_argument("--instances", type=int, help="forward passes at once per version; 0 = auto")
    parser.add_argument("--decode-threads", type=int)
    parser.add_argument("--grace-period-s", type=float)
    parser.add_argument(
        "--allow-remote-code",
        action="store_const",
        const=True,
        help="let versions that ask for trust_remote_code run code from their artifact (default: refused)",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    return WorkerSettings(**overrides)


async def serve(settings: WorkerSettings) -> None:
    worker = InferenceWorker(settings)
    await worker.start()
    try:
        await wait_for_shutdown_signal()
    finally:
        await worker.stop()


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = parse_args(argv)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
