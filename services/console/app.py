"""The console's ASGI app: routes, static assets, security headers, and its long-lived parts."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.client import ClientSettings
from modelyard.console import (
    benchmarks,
    catalog,
    compare,
    history,
    login,
    metric_history,
    overview,
    register,
    switch,
)
from modelyard.console.backends import Backends
from modelyard.console.benchmark_jobs import BenchmarkJobs
from modelyard.console.sessions import Logins, SessionCookies
from modelyard.console.settings import ConsoleSettings
from modelyard.console.web import Console

HERE = Path(__file__).resolve().parent
# Every asset is the console's own; nothing inline runs, no frame may embed a page.
_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class ServerTiming:
    """`Server-Timing: app;dur=MS` on every response: the console's own time from the request to the
    response's start (session, registry calls, rendering), so a benchmark or a browser's devtools can
    tell it from the network round trip. A streamed response (SSE) counts only until its headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed_ms = (time.perf_counter() - started) * 1000
                timing = (b"server-timing", f"app;dur={elapsed_ms:.2f}".encode())
                message["headers"] = [*message.get("headers", []), timing]
            await send(message)

        await self.app(scope, receive, with_timing)


def templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def create_app(
    settings: ConsoleSettings,
    *,
    stopping: Callable[[], bool] = lambda: False,
    client: ClientSettings | None = None,
) -> Starlette:
    console = Console(
        settings=settings,
        backends=Backends(settings, client),
        cookies=SessionCookies(settings.session_secret, settings.session_max_age_s),
        logins=Logins(settings.tokens()),
        templates=templates(),
        stopping=stopping,
    )
    jobs = BenchmarkJobs(
        settings.benchmark,
        client if client is not None else ClientSettings(),
        lambda error: console.backends.explain(error, service="benchmark service").message,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await jobs.close()
            await console.backends.close()

    routes: list[Any] = [
        Route("/", overview.overview),
        Route("/events/overview", overview.overview_events),
        Route("/catalog", catalog.catalog),
        Route("/deployments/{name}", switch.deployment_page),
        Route("/events/deployments/{name}", switch.deployment_events),
        Route("/deployments/{name}/switch", switch.switch_form),
        Route("/deployments/{name}/switch", switch.switch_submit, methods=["POST"]),
        Route("/deployments/{name}/canary", switch.canary_submit, methods=["POST"]),
        Route("/deployments/{name}/rollback", switch.rollback_submit, methods=["POST"]),
        Route("/deployments/{name}/plan", switch.plan_submit, methods=["POST"]),
        Route("/compare", compare.compare),
        Route("/compare/history", metric_history.metric_history),
        Route("/benchmarks", benchmarks.benchmarks_page),
        Route("/benchmarks", benchmarks.benchmarks_submit, methods=["POST"]),
        Route("/benchmarks/{job}", benchmarks.job_page),
        Route("/events/benchmarks/{job}", benchmarks.job_events),
        Route("/history", history.history),
        Route("/register", register.register_form),
        Route("/register", register.register_submit, methods=["POST"]),
        Route("/login", login.login_form),
        Route("/login", login.login_submit, methods=["POST"]),
        Route("/logout", login.logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.console = console
    app.state.benchmark_jobs = jobs
    app.add_middleware(SecurityHeaders)
    app.add_middleware(ServerTiming)
    return app
