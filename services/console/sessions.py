"""Login sessions kept in the browser: an encrypted, signed cookie (HttpOnly, SameSite=Strict)
holding who logged in, the token forwarded on their calls, and the CSRF token every POST must carry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass, replace

from cryptography.fernet import Fernet, InvalidToken

from modelyard.common.auth import Role, TokenAuthorizer
from modelyard.common.errors import Unauthenticated

COOKIE = "modelyard_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Session:
    """One browser's session; `name` is empty until someone logs in."""

    csrf: str
    name: str = ""
    role: str = ""
    # The user's own bearer token: the console forwards it, so the registry checks and audits them.
    token: str = ""

    @property
    def logged_in(self) -> bool:
        return bool(self.name)

    @property
    def admin(self) -> bool:
        return self.role == Role.ADMIN.value

    def csrf_matches(self, offered: str | None) -> bool:
        return bool(offered) and hmac.compare_digest(self.csrf.encode(), (offered or "").encode())


def new_session() -> Session:
    return Session(csrf=secrets.token_urlsafe(24))


class SessionCookies:
    """Turns a Session into a cookie value and back. Fernet (AES-CBC + HMAC-SHA256, with a
    timestamp) rather than a signature alone: the cookie carries a bearer token, which must not be
    readable from a copied cookie or a proxy log."""

    def __init__(self, secret: str, max_age_s: int) -> None:
        raw = secret.encode() if secret else secrets.token_bytes(32)
        self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest()))
        self.max_age_s = max_age_s

    def dump(self, session: Session) -> str:
        return self._fernet.encrypt(json.dumps(asdict(session)).encode()).decode()

    def load(self, value: str | None) -> Session | None:
        """The session in `value`, or None when it is missing, forged, from another key or expired."""
        if not value:
            return None
        try:
            fields = json.loads(self._fernet.decrypt(value.encode(), ttl=self.max_age_s))
            return Session(**{k: str(fields.get(k, "")) for k in ("csrf", "name", "role", "token")})
        except (InvalidToken, ValueError, TypeError):
            return None


class Logins:
    """Who a login token belongs to, from the configured token lists (verifiers suffice)."""

    def __init__(self, tokens: dict[Role, str]) -> None:
        self._authorizer = TokenAuthorizer(tokens)

    @property
    def required(self) -> bool:
        return self._authorizer.enabled

    def log_in(self, session: Session, token: str) -> Session:
        """The session of `token`'s holder, with a fresh CSRF token; Unauthenticated if unknown."""
        token = token.strip()
        if not token:
            raise Unauthenticated("enter your Modelyard token (the admin or reader token you were given)")
        try:
            principal = self._authorizer.authenticate(f"Bearer {token}")
        except Unauthenticated:
            raise Unauthenticated(
                "unknown token: use an admin or reader token this installation configured "
                "(MODELYARD_ADMIN_TOKENS / MODELYARD_READER_TOKENS)"
            ) from None
        return replace(
            session,
            name=principal.name,
            role=principal.role.value,
            token=token,
            csrf=secrets.token_urlsafe(24),
        )
