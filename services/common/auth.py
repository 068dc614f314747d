"""Bearer-token authentication and role-based access: who a caller is, and what its role may call.

Roles (`Role`): `admin` changes anything; `reader` reads; `worker` watches deployments, reads and
sends heartbeats; `benchmark` reads, stages versions at weight 0 and records runs. Each server
declares an `AccessPolicy` (method -> roles); admin may call every method.

A token setting is a comma-separated list of entries, each one of
- `name:token` or a bare `token` (named after the role): the secret itself;
- `name:sha256:HEX` or `sha256:HEX`: a verifier, the sha256 of the token in hex. A server
  configured with verifiers can check callers without holding a token it could use itself, so
  a worker that checks its callers' tokens cannot call the registry as one of them.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from modelyard.common.errors import PermissionDenied, Unauthenticated

_VERIFIER = re.compile(r"^sha256:([0-9a-f]{64})$")


class Role(enum.Enum):
    ADMIN = "admin"
    READER = "reader"
    WORKER = "worker"
    BENCHMARK = "benchmark"


ALL_ROLES = frozenset(Role)


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class _Credential:
    role: Role
    name: str
    digest: bytes  # sha256 of the token


def token_verifier(token: str) -> str:
    """`sha256:HEX` for `token`: what a server may hold instead of the token itself."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def parse_tokens(spec: str, role: Role) -> list[_Credential]:
    """One role's token setting -> credentials (see the module docstring for the syntax)."""
    found = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if _VERIFIER.match(item):
            name, secret = role.value, item
        else:
            name, sep, secret = item.partition(":")
            if not sep:
                name, secret = role.value, item
        if not name or not secret:
            raise ValueError(f"{role.value} token entry {item.split(':')[0]!r}...: expected name:token")
        verifier = _VERIFIER.match(secret)
        if verifier:
            digest = bytes.fromhex(verifier.group(1))
        elif secret.startswith("sha256:"):
            raise ValueError(
                f"{role.value} token {name!r}: a verifier is sha256: followed by 64 lower-case hex digits"
            )
        else:
            digest = hashlib.sha256(secret.encode()).digest()
        found.append(_Credential(role, name, digest))
    return found


def verifiers_only(spec: str, role: Role) -> str:
    """The same setting with every secret replaced by its verifier (for servers that only check)."""
    return ",".join(f"{c.name}:sha256:{c.digest.hex()}" for c in parse_tokens(spec, role))


@dataclass(frozen=True)
class AccessPolicy:
    """Which roles may call each method of one service; admin may call everything.

    Methods not listed are admin-only, so a new RPC is closed until someone opens it."""

    methods: Mapping[str, frozenset[Role]]

    @classmethod
    def of(cls, rules: Mapping[Collection[str], Collection[Role]]) -> AccessPolicy:
        """{methods: roles} groups -> one policy."""
        methods: dict[str, frozenset[Role]] = {}
        for names, roles in rules.items():
            for name in names:
                methods[name] = methods.get(name, frozenset()) | frozenset(roles)
        return cls(methods)

    def roles_for(self, method: str) -> frozenset[Role]:
        return self.methods.get(method, frozenset()) | {Role.ADMIN}


class TokenAuthorizer:
    """Decides who a caller is from its `authorization` metadata, and whether it may call a method."""

    def __init__(self, tokens: Mapping[Role, str]) -> None:
        self._credentials = [c for role, spec in tokens.items() for c in parse_tokens(spec, role)]

    @property
    def enabled(self) -> bool:
        return bool(self._credentials)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated(
                "missing credentials: send metadata `authorization: Bearer <token>` "
                "(set MODELYARD_TOKEN for the CLI)"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("malformed authorization metadata: expected `Bearer <token>`")
        digest = hashlib.sha256(token.encode()).digest()
        found: _Credential | None = None
        for credential in self._credentials:  # every entry compared, so timing says nothing
            if hmac.compare_digest(credential.digest, digest) and found is None:
                found = credential
        if found is None:
            raise Unauthenticated(
                "unknown token: check MODELYARD_TOKEN against the server's configured tokens"
            )
        return Principal(name=found.name, role=found.role)

    @staticmethod
    def authorize(principal: Principal, method: str, policy: AccessPolicy) -> None:
        allowed = policy.roles_for(method)
        if principal.role not in allowed:
            needed = " or ".join(sorted(r.value for r in allowed))
            raise PermissionDenied(
                f"{principal.name!r} holds {_article(principal.role.value)} token, which may not call "
                f"{method}; it needs {_article(needed)} token"
            )


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"
