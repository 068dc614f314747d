"""Token settings, verifiers and role policies."""

from __future__ import annotations

import pytest

from modelyard.common.auth import (
    AccessPolicy,
    Principal,
    Role,
    TokenAuthorizer,
    token_verifier,
    verifiers_only,
)
from modelyard.common.errors import PermissionDenied, Unauthenticated


def test_plain_tokens_and_verifiers_authenticate_alike() -> None:
    authorizer = TokenAuthorizer(
        {
            Role.ADMIN: "ops:s3cret",
            Role.READER: f"dash:{token_verifier('r34d')},bare-reader",
            Role.WORKER: token_verifier("w0rk"),
        }
    )
    assert authorizer.authenticate("Bearer s3cret").name == "ops"
    assert authorizer.authenticate("Bearer r34d").role is Role.READER
    assert authorizer.authenticate("bearer bare-reader").name == "reader"
    assert authorizer.authenticate("Bearer w0rk").role is Role.WORKER
    for header in (None, "", "Basic s3cret", "Bearer ", "Bearer nope", f"Bearer {token_verifier('w0rk')}"):
        with pytest.raises(Unauthenticated):
            authorizer.authenticate(header)


def test_a_malformed_verifier_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="64 lower-case hex"):
        TokenAuthorizer({Role.ADMIN: "ops:sha256:abc"})


def test_verifiers_only_keeps_names_and_drops_secrets() -> None:
    converted = verifiers_only("ops:s3cret,other", Role.ADMIN)
    authorizer = TokenAuthorizer({Role.ADMIN: converted})
    assert authorizer.authenticate("Bearer s3cret").name == "ops"
    assert authorizer.authenticate("Bearer other").name == "admin"
    assert "s3cret" not in converted
    assert converted.split(",")[1].startswith("admin:sha256:")


def test_policy_admin_always_and_unlisted_methods_admin_only() -> None:
    policy = AccessPolicy.of({("Read",): (Role.READER, Role.WORKER), ("Beat",): (Role.WORKER,)})
    authorize = TokenAuthorizer.authorize
    worker, reader, admin = (
        Principal("w", Role.WORKER),
        Principal("r", Role.READER),
        Principal("a", Role.ADMIN),
    )
    authorize(worker, "Read", policy)
    authorize(worker, "Beat", policy)
    authorize(admin, "Anything", policy)
    with pytest.raises(
        PermissionDenied,
        match="holds a reader token, which may not call Beat; it needs an admin or worker token",
    ):
        authorize(reader, "Beat", policy)
    with pytest.raises(PermissionDenied):
        authorize(worker, "NewRpc", policy)
