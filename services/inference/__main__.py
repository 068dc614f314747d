"""`python -m modelyard.inference`: run one inference worker until SIGTERM/SIGINT; the same command as
`modelyard worker serve` (flags, help and validation are defined once, in `modelyard.cli.serve`)."""

from __future__ import annotations

from modelyard.cli.entry import run_command
from modelyard.cli.serve import worker_serve


def main(argv: list[str] | None = None) -> None:
    run_command(worker_serve, argv, prog_name="python -m modelyard.inference")


if __name__ == "__main__":
    main()
