"""Parsing of command-line values (`version=weight`, `key=value`, SemVer) into request fields."""

from __future__ import annotations

from collections.abc import Iterable

from modelyard.api import registry_pb2 as rpb
from modelyard.cli.errors import UsageError
from modelyard.common.errors import InvalidArgument
from modelyard.registry.validation import check_semver


def parse_routes(items: Iterable[str]) -> list[rpb.Route]:
    """`["1.0.0=90", "1.1.0=10"]` -> routes; weights are integers 0-100 (0 = staged)."""
    routes = []
    for item in items:
        version, sep, weight = item.partition("=")
        if not sep or not version or not weight.strip().isdigit():
            raise UsageError(f"route {item!r} is not VERSION=WEIGHT (e.g. 1.0.0=90 1.1.0=10)")
        routes.append(rpb.Route(version=version.strip(), weight=int(weight)))
    if not routes:
        raise UsageError("give at least one route VERSION=WEIGHT")
    return routes


def parse_key_values(items: Iterable[str], what: str = "tag") -> dict[str, str]:
    """`["team=search", "demo"]` -> {"team": "search", "demo": ""}."""
    parsed = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key.strip():
            raise UsageError(f"{what} {item!r} is not KEY=VALUE")
        parsed[key.strip()] = value.strip()
    return parsed


def semver(version: str) -> str:
    """Check a version string locally, before any slow work (hashing, copying) happens."""
    try:
        return check_semver(version)
    except InvalidArgument as error:
        raise UsageError(error.message) from None
