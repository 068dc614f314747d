"""Where model artifacts may come from: the configured artifact roots (URL prefixes), and the one
check of a `source_uri` against them that the registry applies at registration and every worker
applies again before it fetches.

A root is a URL prefix ending in `/` (`file:///var/lib/modelyard/artifacts/`, `s3://models/`); a
plain absolute path is the `file://` URI of that directory. A source URI is allowed when, once
normalised (a plain absolute path becomes `file://` + path), it starts with a root and has no `..`
segment, raw or percent-encoded. The check is lexical, so the registry can apply it without seeing
the artifact; a worker also resolves symlinks on local paths (`outside_local_roots`).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote

from pydantic import AfterValidator

ARTIFACT_ROOTS_ENV = "MODELYARD_ARTIFACT_ROOTS"
ARTIFACT_STORE_ENV = "MODELYARD_ARTIFACT_STORE"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_LOCAL_SCHEMES = ("file", "local")  # fsspec reads `local://` as `file://`
_HOW_TO_ADD = (
    f"store the artifact under one of them (`modelyard models import` copies it into the artifact "
    f"store), or add a root to {ARTIFACT_ROOTS_ENV} (comma-separated URL prefixes, e.g. "
    "file:///srv/models/,s3://bucket/models/) on the registry and on every worker"
)


class ArtifactLocationError(ValueError):
    """A source URI or configured root the artifact rules refuse; the message says why and what to do."""


def default_artifact_store() -> str:
    """Where `modelyard models import` stores artifacts: `MODELYARD_ARTIFACT_STORE` (any fsspec URL
    or path), else ~/.local/share/modelyard/artifacts."""
    configured = os.environ.get(ARTIFACT_STORE_ENV)
    if configured:
        return configured
    return str(Path.home() / ".local" / "share" / "modelyard" / "artifacts")


def store_root(store: str) -> str:
    """An artifact store (an fsspec URL, or a path, relative ones from the working directory) as a root."""
    if _SCHEME.match(store.strip()) is None:
        store = os.path.abspath(os.path.expanduser(store.strip()))
    return root_uri(store)


def default_artifact_roots() -> str:
    """The default of the `artifact_roots` settings: the default artifact store, and nothing else."""
    return store_root(default_artifact_store())


def roots_with_store(roots: str, store: str) -> str:
    """`roots` (an `artifact_roots` setting, possibly empty) plus the artifact store `store`."""
    parts = [part.strip() for part in roots.split(",") if part.strip()]
    return ",".join(dict.fromkeys([*parts, store_root(store)]))


def _refuse_dot_segments(text: str, what: str) -> None:
    """`..` as a path segment, also percent-encoded (once or several times), anywhere in `text`."""
    variants = [text]
    for _ in range(4):
        decoded = unquote(variants[-1])
        if decoded == variants[-1]:
            break
        variants.append(decoded)
    for variant in variants:
        if any(ord(c) < 0x20 or c == "\x7f" for c in variant):
            raise ArtifactLocationError(f"{what} {text!r} contains control characters")
        if ".." in re.split(r"[/\\]", variant):
            raise ArtifactLocationError(
                f"{what} {text!r} contains a `..` segment; name the artifact by a path without `..`"
            )


def _split(text: str, what: str) -> tuple[str, str]:
    """(scheme, rest after `://`), a plain path counting as `file`; refuses what cannot be checked."""
    if not text or text != text.strip():
        raise ArtifactLocationError(f"{what} {text!r} is empty or has spaces around it")
    if "::" in text:
        raise ArtifactLocationError(
            f"{what} {text!r} is a chained fsspec URL (`::`); name the artifact by one plain URL"
        )
    match = _SCHEME.match(text)
    if match is None:
        path = os.path.expanduser(text) if what == "artifact root" else text
        if not path.startswith("/"):
            raise ArtifactLocationError(
                f"{what} {text!r} is a relative path; give an absolute path or a URL such as "
                "file:///srv/models/minilm or s3://bucket/models/minilm"
            )
        return "file", path
    scheme = match.group(1).lower()
    rest = text[match.end() :]
    if scheme in _LOCAL_SCHEMES:
        if not rest.startswith("/"):
            raise ArtifactLocationError(
                f"{what} {text!r} has a host or a relative path after {scheme}://; "
                "a local artifact is file:///absolute/path (three slashes)"
            )
        return "file", rest
    return scheme, rest


def normalize_source_uri(uri: str) -> str:
    """`uri` as the registry stores it and a worker fetches it (`file://` + normalised path for a
    local artifact); raises ArtifactLocationError for what the rules refuse whatever the roots."""
    scheme, rest = _split(uri, "source_uri")
    _refuse_dot_segments(rest, "source_uri")
    if scheme == "file":
        return "file://" + posixpath.normpath(rest)
    return f"{scheme}://{rest}"


def root_uri(text: str) -> str:
    """One configured root as a URL prefix ending in `/` (a plain path: its `file://` URI)."""
    scheme, rest = _split(text.strip(), "artifact root")
    _refuse_dot_segments(rest, "artifact root")
    if scheme == "file":
        rest = posixpath.normpath(rest)
    uri = f"{scheme}://{rest}"
    return uri if uri.endswith("/") else uri + "/"


def local_path(uri: str) -> str | None:
    """The local path a normalised `file://` URI names; None for any other scheme."""
    return uri[len("file://") :] if uri.startswith("file://") else None


@dataclass(frozen=True)
class ArtifactRoots:
    """The configured roots, normalised; `check` is the rule."""

    prefixes: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> ArtifactRoots:
        prefixes = tuple(dict.fromkeys(root_uri(part) for part in text.split(",") if part.strip()))
        if not prefixes:
            raise ArtifactLocationError(
                f"no artifact roots are configured; set {ARTIFACT_ROOTS_ENV} to the URL prefixes "
                "artifacts may come from (e.g. file:///srv/models/,s3://bucket/models/)"
            )
        return cls(prefixes)

    def describe(self) -> str:
        return ", ".join(self.prefixes)

    def check(self, uri: str) -> str:
        """The normalised `uri` when it lies inside a root; ArtifactLocationError saying why not."""
        normalized = normalize_source_uri(uri)
        if any(normalized.startswith(p) and len(normalized) > len(p) for p in self.prefixes):
            return normalized
        scheme = normalized.split("://", 1)[0]
        if not any(p.startswith(f"{scheme}://") for p in self.prefixes):
            raise ArtifactLocationError(
                f"source_uri {uri} uses the scheme {scheme}://, which no artifact root allows "
                f"(roots: {self.describe()}); {_HOW_TO_ADD}"
            )
        raise ArtifactLocationError(
            f"source_uri {uri} lies outside the artifact roots ({self.describe()}); {_HOW_TO_ADD}"
        )

    def local_paths(self) -> list[str]:
        return [path for p in self.prefixes if (path := local_path(p)) is not None]

    def outside_local_roots(self, path: str) -> str | None:
        """Where `path` really leads (symlinks resolved) when that is outside every local root, else None."""
        real = os.path.realpath(path)
        for root in self.local_paths():
            real_root = os.path.realpath(root)
            if real == real_root or real.startswith(real_root.rstrip("/") + "/"):
                return None
        return real


def _validated(text: str) -> str:
    ArtifactRoots.parse(text)  # raises ArtifactLocationError, a ValueError pydantic reports
    return text


# The type of the `artifact_roots` settings field: comma-separated roots, checked when settings load.
ArtifactRootsSetting = Annotated[str, AfterValidator(_validated)]
