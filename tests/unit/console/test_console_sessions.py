"""The console's session cookie and logins: what a forger, an expired cookie and an unknown token get."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from modelyard.common.auth import Role, token_verifier
from modelyard.common.errors import Unauthenticated
from modelyard.console.sessions import Logins, SessionCookies, new_session


def test_a_cookie_round_trips_and_keeps_the_token_unreadable() -> None:
    cookies = SessionCookies("secret", max_age_s=60)
    session = replace(new_session(), name="ops", role="admin", token="the-bearer-token")
    value = cookies.dump(session)
    assert "the-bearer-token" not in value and "ops" not in value
    assert cookies.load(value) == session


def test_forged_foreign_and_expired_cookies_are_no_session() -> None:
    cookies = SessionCookies("secret", max_age_s=1)
    value = cookies.dump(replace(new_session(), name="ops", role="admin", token="t"))
    assert cookies.load(value[:-4] + "AAAA") is None
    assert SessionCookies("another secret", max_age_s=60).load(value) is None
    assert cookies.load("not a cookie") is None and cookies.load(None) is None
    time.sleep(2.1)
    assert cookies.load(value) is None


def test_csrf_must_match_exactly() -> None:
    session = new_session()
    assert session.csrf_matches(session.csrf)
    assert not session.csrf_matches("") and not session.csrf_matches(None)
    assert not session.csrf_matches(session.csrf + "x")


def test_login_names_the_role_from_verifiers_and_refuses_unknown_tokens() -> None:
    logins = Logins({Role.ADMIN: f"ops:{token_verifier('a-token')}", Role.READER: "dash:r-token"})
    assert logins.required
    before = new_session()
    admin = logins.log_in(before, "a-token")
    assert (admin.name, admin.role, admin.token, admin.admin) == ("ops", "admin", "a-token", True)
    assert admin.csrf != before.csrf, "a login renews the CSRF token"
    reader = logins.log_in(before, " r-token ")
    assert (reader.name, reader.admin) == ("dash", False)
    with pytest.raises(Unauthenticated, match="unknown token"):
        logins.log_in(before, "guess")
    with pytest.raises(Unauthenticated, match="enter your Modelyard token"):
        logins.log_in(before, "  ")
    assert not Logins({Role.ADMIN: "", Role.READER: ""}).required
