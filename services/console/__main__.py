"""`python -m modelyard.console`: run the web console until SIGTERM/SIGINT; the same command as
`modelyard console serve` (flags, help and validation are defined once, in `modelyard.cli.serve`)."""

from __future__ import annotations

from modelyard.cli.entry import run_command
from modelyard.cli.serve import console_serve


def main(argv: list[str] | None = None) -> None:
    run_command(console_serve, argv, prog_name="python -m modelyard.console")


if __name__ == "__main__":
    main()
