"""`python -m modelyard.registry`: run one registry replica."""

from __future__ import annotations

import argparse
import asyncio

from modelyard.common.log import configure_logging
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modelyard.registry", description=__doc__)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--database-url")
    parser.add_argument("--data-dir")
    parser.add_argument("--poll-interval-s", type=float)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = RegistrySettings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(RegistryServer(settings).run())


if __name__ == "__main__":
    main()
