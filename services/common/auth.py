"""Bearer-token authorization: readers may call read RPCs, admins may call everything."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from modelyard.common.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool


def parse_tokens(spec: str, default_name: str) -> dict[str, str]:
    """`name:token,token2` -> {token: name}."""
    tokens: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, token = item.partition(":")
        if not sep:
            name, token = default_name, item
        tokens[token] = name
    return tokens


class TokenAuthorizer:
    """Decides who a caller is from its `authorization` metadata, and whether it may call a method."""

    def __init__(self, admin_tokens: str, reader_tokens: str) -> None:
        self._admins = parse_tokens(admin_tokens, "admin")
        self._readers = parse_tokens(reader_tokens, "reader")

    @property
    def enabled(self) -> bool:
        return bool(self._admins or self._readers)

    def authorize(self, authorization: str | None, *, write: bool) -> Principal:
        if not authorization:
            raise Unauthenticated(
                "missing credentials: send metadata `authorization: Bearer <token>` "
                "(set MODELYARD_TOKEN for the CLI)"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("malformed authorization metadata: expected `Bearer <token>`")
        for known, name in self._admins.items():
            if hmac.compare_digest(known, token):
                return Principal(name=name, admin=True)
        for known, name in self._readers.items():
            if hmac.compare_digest(known, token):
                if write:
                    raise PermissionDenied(
                        f"token of {name!r} may only read; this call changes state and needs an admin token"
                    )
                return Principal(name=name, admin=False)
        raise Unauthenticated("unknown token: check MODELYARD_TOKEN against the server's configured tokens")
