"""Logging in with a Modelyard token, and out."""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response

from modelyard.common.errors import Unauthenticated
from modelyard.console.sessions import new_session
from modelyard.console.web import Page, page


def _next(current: Page, raw: str) -> str:
    # Only paths of this console: `//host` or a scheme would send the user elsewhere after login.
    return raw if raw.startswith("/") and not raw.startswith("//") and "\\" not in raw else "/"


@page(login=False)
async def login_form(current: Page) -> Response:
    if not current.console.logins.required:
        return RedirectResponse("/", 303)
    return current.render("login.html", next=_next(current, current.query("next")), error="")


@page(login=False)
async def login_submit(current: Page) -> Response:
    target = _next(current, current.field("next"))
    try:
        current.set_session(current.console.logins.log_in(current.session, current.field("token")))
    except Unauthenticated as error:
        return current.render("login.html", status=401, next=target, error=error.message)
    return RedirectResponse(target, 303)


@page(login=False)
async def logout(current: Page) -> Response:
    current.set_session(new_session())
    return RedirectResponse("/login" if current.console.logins.required else "/", 303)
