"""Server interceptors: request ids, auth, RPC metrics and the one mapping from errors to status codes."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import grpc
from grpc import aio

from modelyard.common import metrics
from modelyard.common.auth import Principal, TokenAuthorizer
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
                async for item in inner_us(request, context):
                    yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler  # client-streaming RPCs are not part of our contracts


class _Interceptor(aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _wrap(handler, handler_call_details.method, self.around)

    def around(
        self, method: str, context: aio.ServicerContext
    ) -> contextlib.AbstractAsyncContextManager[None]:
        raise NotImplementedError


def _metadata(context: aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


class ErrorMappingInterceptor(_Interceptor):
    """Sets the request id; turns domain errors into their status; hides unexpected ones behind INTERNAL."""

    @contextlib.asynccontextmanager
    async def around(self, method: str, context: aio.ServicerContext) -> AsyncIterator[None]:
        rid = _metadata(context, "x-request-id") or uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        try:
            yield
        except ModelyardError as exc:
            event(log, "rpc.error", method=method, code=exc.code.name, detail=exc.message)
            await context.abort(exc.code, exc.message)
        except aio.AbortError:
            raise
        except Exception:
            log.exception("rpc.unexpected", extra={"fields": {"method": method}})
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error; quote request id {rid} when reporting it"
            )
        finally:
            request_id_var.reset(token)


class AuthInterceptor(_Interceptor):
    """Checks bearer tokens when any are configured; `write_methods` need an admin token."""

    def __init__(self, authorizer: TokenAuthorizer, write_methods: Collection[str]) -> None:
        self._authorizer = authorizer
        self._write_methods = frozenset(write_methods)

    @contextlib.asynccontextmanager
    async def around(self, method: str, context: aio.ServicerContext) -> AsyncIterator[None]:
        if not self._authorizer.enabled or method.startswith(_OPEN_SERVICES):
            principal = Principal(name=_metadata(context, "x-modelyard-actor") or "anonymous", admin=True)
        else:
            principal = self._authorizer.authorize(
                _metadata(context, "authorization"),
                write=method.rsplit("/", 1)[-1] in self._write_methods,
            )
        token = principal_var.set(principal)
        try:
            yield
        finally:
            principal_var.reset(token)


class MetricsInterceptor(_Interceptor):
    """Records `modelyard_rpc_duration_seconds` per service, method and status code."""

    def __init__(self, component: str) -> None:
        self._component = component

    @contextlib.asynccontextmanager
    async def around(self, method: str, context: aio.ServicerContext) -> AsyncIterator[None]:
        start = time.perf_counter()
        code = "OK"
        try:
            yield
        except aio.AbortError:
            code = (context.code() or grpc.StatusCode.UNKNOWN).name
            raise
        except ModelyardError as exc:
            code = exc.code.name
            raise
        except BaseException:
            code = "INTERNAL"
            raise
        finally:
            _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", "", method)
            metrics.RPC_DURATION.labels(self._component, service, name, code).observe(
                time.perf_counter() - start
            )


def current_actor() -> str:
    principal = principal_var.get()
    return principal.name if principal else "anonymous"
