"""Files the CLI reads and writes for the user; every failure is a UsageError (one line, exit 2)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from modelyard.cli.errors import UsageError


def _name(path: str) -> str:
    return "standard input" if path == "-" else path


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def read_text(path: str, what: str) -> str:
    """A UTF-8 text file (`-` = standard input); a byte-order mark is dropped."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except IsADirectoryError:
        raise UsageError(f"{what} {_name(path)} is a directory; give a file") from None
    except OSError as error:
        raise UsageError(f"cannot read {what} {_name(path)}: {_reason(error)}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{what} {_name(path)} is not UTF-8 text (byte {error.start} is 0x{data[error.start]:02x}); "
            "it must be JSON in UTF-8"
        ) from None


def parse_json(text: str, what: str, path: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise UsageError(f"{what} {_name(path)} is not valid JSON: {error}") from None
    except RecursionError:
        raise UsageError(f"{what} {_name(path)} nests too deeply to be read as JSON") from None


def read_json(path: str, what: str) -> tuple[str, Any]:
    """The text of a JSON file and what it parses to."""
    text = read_text(path, what)
    return text, parse_json(text, what, path)


def check_writable(path: str | Path, what: str) -> None:
    """Refuse an output path that cannot be written before any work is done for it."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{what} {target} is a directory; give a file name")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {what} {target}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"cannot write {what} {target}: permission denied")


def write_text(path: str | Path, text: str, what: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot write {what} {path}: {_reason(error)}") from None
