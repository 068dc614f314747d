"""Server interceptors: request ids, auth, RPC metrics and the one mapping from errors to status codes."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from modelyard.common import metrics
from modelyard.common.auth import AccessPolicy, Principal, Role, TokenAuthorizer
from modelyard.common.errors import ModelyardError
from modelyard.common.log import event, request_id_var

log = logging.getLogger("modelyard.rpc")

principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)

# Probes and discovery must work without credentials.
_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Around = Callable[[str, aio.ServicerContext], contextlib.AbstractAsyncContextManager[None]]


def _wrap(handler: grpc.RpcMethodHandler, method: str, around: Around) -> grpc.RpcMethodHandler:
    """Run every call of `handler` inside the async context manager `around(method, context)`."""
    if handler.unary_unary is not None:
        inner_uu: Any = handler.unary_unary  # grpc-stubs type the sync signature only

        async def unary_unary(request: Any, context: aio.ServicerContext) -> Any:
            async with around(method, context):
                return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            async with around(method, context):
                responses = inner_us(request, context)
                if not hasattr(responses, "__aiter__"):
                    # A handler that writes with `context.write()` (grpc.health's Watch) is a plain
                    # coroutine, not an async generator.
                    await responses
                    return
                async for item in responses:
                    yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler  # client-streaming RPCs are not part of our contracts


class _Interceptor(aio.ServerInterceptor):
    """Wraps each method's handler once and reuses the wrapper: gRPC resolves the handler on every
    call, and building a new one per call (three interceptors deep) is measurable on the hot path."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(handler, method, self.around)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def around(
        self, method: str, context: aio.ServicerContext
    ) -> contextlib.AbstractAsyncContextManager[None]:
        raise NotImplementedError


def _metadata(context: aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


# The context managers below are plain classes rather than @asynccontextmanager generators: they
# run three deep around every call, and a generator-based one costs several times as much.


class _RequestScope:
    __slots__ = ("_context", "_method", "_rid", "_token")

    def __init__(self, method: str, context: aio.ServicerContext) -> None:
        self._method = method
        self._context = context
        self._rid = ""
        self._token: contextvars.Token[str] | None = None

    async def __aenter__(self) -> None:
        self._rid = _metadata(self._context, "x-request-id") or uuid.uuid4().hex[:16]
        self._token = request_id_var.set(self._rid)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        try:
            if exc is None or isinstance(exc, aio.AbortError) or not isinstance(exc, Exception):
                return
            if isinstance(exc, ModelyardError):
                # Refusals at capacity come by the thousand under a flood; the metrics count them.
                level = logging.DEBUG if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED else logging.INFO
                event(
                    log, "rpc.error", level=level, method=self._method, code=exc.code.name, detail=exc.message
                )
                await self._context.abort(exc.code, exc.message)
            log.exception("rpc.unexpected", exc_info=exc, extra={"fields": {"method": self._method}})
            await self._context.abort(
                grpc.StatusCode.INTERNAL, f"internal error; quote request id {self._rid} when reporting it"
            )
        finally:
            assert self._token is not None
            request_id_var.reset(self._token)


class ErrorMappingInterceptor(_Interceptor):
    """Sets the request id; turns domain errors into their status; hides unexpected ones behind INTERNAL."""

    def around(self, method: str, context: aio.ServicerContext) -> _RequestScope:
        return _RequestScope(method, context)


class _PrincipalScope:
    __slots__ = ("_principal", "_token")

    def __init__(self, principal: Principal) -> None:
        self._principal = principal
        self._token: contextvars.Token[Principal | None] | None = None

    async def __aenter__(self) -> None:
        self._token = principal_var.set(self._principal)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        assert self._token is not None
        principal_var.reset(self._token)


class AuthInterceptor(_Interceptor):
    """Checks bearer tokens when any are configured, and the caller's role against `policy`."""

    def __init__(self, authorizer: TokenAuthorizer, policy: AccessPolicy) -> None:
        super().__init__()
        self._authorizer = authorizer
        self._policy = policy

    def around(self, method: str, context: aio.ServicerContext) -> _PrincipalScope:
        # Authorization errors raise here, inside the outer interceptors' scopes, as before.
        if not self._authorizer.enabled or method.startswith(_OPEN_SERVICES):
            principal = Principal(_metadata(context, "x-modelyard-actor") or "anonymous", Role.ADMIN)
        else:
            principal = self._authorizer.authenticate(_metadata(context, "authorization"))
            self._authorizer.authorize(principal, method.rsplit("/", 1)[-1], self._policy)
        return _PrincipalScope(principal)


class _TimedScope:
    __slots__ = ("_context", "_observe", "_start")

    def __init__(self, observe: Callable[[str, float], None], context: aio.ServicerContext) -> None:
        self._observe = observe
        self._context = context
        self._start = 0.0

    async def __aenter__(self) -> None:
        self._start = time.perf_counter()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None:
            code = "OK"
        elif isinstance(exc, aio.AbortError):
            code = (self._context.code() or grpc.StatusCode.UNKNOWN).name
        elif isinstance(exc, ModelyardError):
            code = exc.code.name
        else:
            code = "INTERNAL"
        self._observe(code, time.perf_counter() - self._start)


class MetricsInterceptor(_Interceptor):
    """Records `modelyard_rpc_duration_seconds` per service, method and status code."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self._component = component
        self._observers: dict[str, Callable[[str, float], None]] = {}

    def _observer(self, method: str) -> Callable[[str, float], None]:
        observer = self._observers.get(method)
        if observer is None:
            _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", "", method)
            children: dict[str, Any] = {}
            component = self._component

            def observe(code: str, seconds: float) -> None:
                child = children.get(code)
                if child is None:
                    child = children[code] = metrics.RPC_DURATION.labels(component, service, name, code)
                child.observe(seconds)

            observer = self._observers[method] = observe
        return observer

    def around(self, method: str, context: aio.ServicerContext) -> _TimedScope:
        return _TimedScope(self._observer(method), context)


def current_actor() -> str:
    principal = principal_var.get()
    return principal.name if principal else "anonymous"
