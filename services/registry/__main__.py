"""`python -m modelyard.registry`: run one registry replica; the same command as `modelyard registry
serve` (flags, help and validation are defined once, in `modelyard.cli.serve`)."""

from __future__ import annotations

from modelyard.cli.entry import run_command
from modelyard.cli.serve import registry_serve


def main(argv: list[str] | None = None) -> None:
    run_command(registry_serve, argv, prog_name="python -m modelyard.registry")


if __name__ == "__main__":
    main()
