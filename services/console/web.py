"""What every page shares: the session cookie, CSRF and role checks, rendering into the layout, and
failed calls turned into a banner or an error page (never a traceback)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from modelyard.client import BenchmarkClient, ModelyardError, RegistryClient
from modelyard.common.log import event
from modelyard.console.backends import Backends, Problem
from modelyard.console.present import SwapClock
from modelyard.console.sessions import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    Logins,
    Session,
    SessionCookies,
    new_session,
)
from modelyard.console.settings import ConsoleSettings

log = logging.getLogger("modelyard.console")
MAX_FORM_BYTES = 64 * 1024
# How long a page that could not reach a service waits before it reloads itself.
RETRY_AFTER_MS = 2000


@dataclass
class Console:
    """The console's long-lived parts, built once at start and shared by every request."""

    settings: ConsoleSettings
    backends: Backends
    cookies: SessionCookies
    logins: Logins
    templates: jinja2.Environment
    stopping: Callable[[], bool]
    swaps: SwapClock = field(default_factory=SwapClock)


class CallFailed(Exception):
    """A call to a service other than the registry failed (the page names that service)."""

    def __init__(self, error: ModelyardError, service: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.service = service


class Page:
    """One request as a handler sees it: who asks, their form, their clients, and rendering."""

    def __init__(self, request: Request, console: Console, session: Session, form: dict[str, list[str]]):
        self.request = request
        self.console = console
        self.session = session
        self.form = form
        self.session_changed = False

    @property
    def admin(self) -> bool:
        """May this user change things? Everyone may when the console asks for no token."""
        return self.session.admin or not self.console.logins.required

    @property
    def token(self) -> str:
        return self.session.token

    async def registry(self) -> RegistryClient:
        return await self.console.backends.registry(self.session.token)

    async def benchmark(self) -> BenchmarkClient:
        return await self.console.backends.benchmark(self.session.token)

    def field(self, name: str, default: str = "") -> str:
        values = self.form.get(name)
        return values[0].strip() if values else default

    def query(self, name: str, default: str = "") -> str:
        return self.request.query_params.get(name, default).strip()

    def set_session(self, session: Session) -> None:
        self.session = session
        self.session_changed = True

    def fragment(self, template: str, **context: Any) -> str:
        return self.console.templates.get_template(template).render(**self._base_context(), **context)

    def render(self, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.fragment(template, **context), status_code=status)

    def problem(self, problem: Problem, *, title: str = "") -> HTMLResponse:
        return self.render("problem.html", status=problem.status, problem=problem, title=title)

    def _base_context(self) -> dict[str, Any]:
        return {
            "user": self.session,
            "admin": self.admin,
            "auth": self.console.logins.required,
            "csrf": self.session.csrf,
            "csrf_field": CSRF_FIELD,
            "path": self.request.url.path,
            "retry_after_ms": RETRY_AFTER_MS,
        }


Handler = Callable[[Page], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def page(*, admin: bool = False, login: bool = True) -> Callable[[Handler], Endpoint]:
    """Wrap a handler: load or start the session, check the CSRF token of a POST, send a user who
    must log in to the login page, refuse readers where `admin`, and render failed calls."""

    def wrap(handler: Handler) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            console: Console = request.app.state.console
            loaded = console.cookies.load(request.cookies.get(COOKIE))
            session = loaded or new_session()
            form: dict[str, list[str]] = {}
            if request.method == "POST":
                body = await request.body()
                if len(body) > MAX_FORM_BYTES:
                    return _refusal(console, session, 413, "the form is larger than 64 KiB")
                form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
                offered = (form.get(CSRF_FIELD) or [request.headers.get(CSRF_HEADER, "")])[0]
                if not session.csrf_matches(offered):
                    return _refusal(
                        console,
                        session,
                        403,
                        "this form carried no valid CSRF token (it is older than your login, or came "
                        "from another site): reload the page and submit it again",
                        fresh=loaded is None,
                    )
            current = Page(request, console, session, form)
            if login and console.logins.required and not session.logged_in:
                if request.method == "GET":
                    response: Response = RedirectResponse(
                        f"/login?next={quote(request.url.path + _query(request), safe='')}", 303
                    )
                else:
                    response = current.problem(Problem("log in first: your session has ended", 401, False))
                return _with_cookie(console, response, session, loaded is None)
            if admin and not current.admin:
                response = current.problem(
                    Problem(
                        f"{session.name!r} is logged in with a reader token, which may not change "
                        "anything; log in with an admin token to do this",
                        403,
                        False,
                    )
                )
                return _with_cookie(console, response, session, loaded is None)
            response = await _run(handler, current)
            return _with_cookie(console, response, current.session, loaded is None or current.session_changed)

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return wrap


async def _run(handler: Handler, current: Page) -> Response:
    console = current.console
    try:
        return await handler(current)
    except (ModelyardError, CallFailed) as failure:
        error, service = (
            (failure.error, failure.service) if isinstance(failure, CallFailed) else (failure, "registry")
        )
        problem = console.backends.explain(error, service=service)
        if problem.outage:
            await console.backends.forget(current.token)
        if problem.signed_out and console.logins.required:
            current.set_session(new_session())
        event(
            log,
            "console.call_failed",
            level=logging.WARNING if problem.outage else logging.INFO,
            path=current.request.url.path,
            service=service,
            code=error.code.name,
            request_id=error.request_id,
        )
        return current.problem(problem)
    except Exception:
        request_id = uuid.uuid4().hex[:16]
        log.exception("console.unexpected_error", extra={"fields": {"request_id": request_id}})
        return current.problem(
            Problem(
                f"the console hit an unexpected error (request id {request_id}); it is in the console's log",
                500,
                False,
            )
        )


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""


def _refusal(
    console: Console, session: Session, status: int, message: str, *, fresh: bool = True
) -> Response:
    body = console.templates.get_template("problem.html").render(
        user=session,
        admin=False,
        auth=console.logins.required,
        csrf=session.csrf,
        csrf_field=CSRF_FIELD,
        path="",
        retry_after_ms=RETRY_AFTER_MS,
        problem=Problem(message, status, False),
        title="",
    )
    return _with_cookie(console, HTMLResponse(body, status_code=status), session, fresh)


def _with_cookie(console: Console, response: Response, session: Session, changed: bool) -> Response:
    if changed:
        response.set_cookie(
            COOKIE,
            console.cookies.dump(session),
            max_age=console.settings.session_max_age_s,
            httponly=True,
            samesite="strict",
            secure=console.settings.scheme == "https",
            path="/",
        )
    return response
