"""`python -m modelyard.benchmark`: run the benchmark service until SIGTERM/SIGINT; the same command as
`modelyard benchmark serve` (flags, help and validation are defined once, in `modelyard.cli.serve`)."""

from __future__ import annotations

from modelyard.cli.entry import run_command
from modelyard.cli.serve import benchmark_serve


def main(argv: list[str] | None = None) -> None:
    run_command(benchmark_serve, argv, prog_name="python -m modelyard.benchmark")


if __name__ == "__main__":
    main()
