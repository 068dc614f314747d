"""Which local directories the console may read to import a model: those under its configured
import roots, judged by where a path really leads (symlinks and `..` resolved first), so a path that
names a root but leads out of it is refused like any other path outside.

The console runs with its own user's file access, and a form field is the admin's to type: without
this check the Register page would hash, load and copy any directory that user can read (another
service's secrets included) into the artifact store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMPORT_ROOTS_ENV = "MODELYARD_CONSOLE_IMPORT_ROOTS"


class ImportRefused(ValueError):
    """A directory the console will not read; the message says why and what to do."""


def _clean(text: str, what: str) -> str:
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise ImportRefused(f"{what} {text!r} contains control characters")
    if not os.path.isabs(text):
        raise ImportRefused(f"{what} {text!r} is a relative path; give an absolute path")
    return os.path.normpath(text)


def _inside(path: str, root: str) -> bool:
    # `/srv/imports-other` is not inside `/srv/imports`: compare whole segments.
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class ImportRoots:
    """The configured roots (absolute, normalised); `resolve` is the rule."""

    paths: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> ImportRoots:
        """Comma-separated absolute paths; empty means directory import is off."""
        parts = [part.strip() for part in text.split(",") if part.strip()]
        return cls(tuple(dict.fromkeys(_clean(part, "import root") for part in parts)))

    @property
    def enabled(self) -> bool:
        return bool(self.paths)

    def describe(self) -> str:
        return ", ".join(self.paths)

    def resolve(self, entered: str) -> Path:
        """The directory `entered` really is, when it lies under a root and can be read.

        Whether the path is under a root is decided before anything about it is looked at, so the
        form cannot be used to learn what exists elsewhere on the host."""
        if not self.enabled:
            raise ImportRefused(
                f"directory import is off on this console: set {IMPORT_ROOTS_ENV} (comma-separated "
                "absolute paths) to the directories admins may import from, or register a stored artifact"
            )
        if not entered:
            raise ImportRefused("give the absolute path of the model directory on the console's host")
        path = _clean(entered, "model directory")
        real = os.path.realpath(path)
        if not any(_inside(real, os.path.realpath(root)) for root in self.paths):
            leads = f" (it leads to {real})" if real != path else ""
            raise ImportRefused(
                f"{entered} lies outside the import roots ({self.describe()}){leads}; put the model "
                f"directory under one of them, or add a root to {IMPORT_ROOTS_ENV}"
            )
        if not os.path.exists(real):
            raise ImportRefused(f"{entered} does not exist on the console's host")
        if not os.path.isdir(real):
            raise ImportRefused(f"{entered} is not a directory; give the model's directory")
        if not os.access(real, os.R_OK | os.X_OK):
            raise ImportRefused(f"{entered} is not readable by the console's user")
        return Path(real)


def validated_import_roots(text: str) -> str:
    """The settings field's check: a relative or malformed root fails at start, not at import."""
    ImportRoots.parse(text)  # ImportRefused is a ValueError, which pydantic reports
    return text
