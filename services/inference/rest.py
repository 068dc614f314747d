"""OIP v2 over HTTP/REST on the worker: a Starlette app on the same `DataPlane` as the gRPC
servicer, served by uvicorn inside the worker's event loop on `--http-port`.

Routes follow KServe's `open_inference_rest.yaml`; bodies are converted in `rest_converters`
(JSON tensors and Triton's binary tensor data extension). What the gRPC side enforces holds here
too: the same bearer tokens and `AccessPolicy` (method names as in gRPC; the two health probes are
open, like gRPC health), the same byte budget (`max_message_bytes`, refused with 413 before the body
is read whole), the item limits and admission of the data plane, and the same TLS certificate.
Errors are `{"error": message}` with the status of the domain error's gRPC code; an unexpected one
is 500 and quotes the request id, never its internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.common.auth import AccessPolicy, TokenAuthorizer
from modelyard.common.errors import InvalidArgument, ModelyardError, ResourceExhausted
from modelyard.common.http_server import SignallessUvicorn, bind_tcp
from modelyard.common.log import event, request_id_var
from modelyard.common.server import is_loopback
from modelyard.inference.dataplane import DataPlane
from modelyard.inference.rest_converters import (
    output_elements,
    parse_header_length,
    request_from_rest,
    response_to_rest,
)
from modelyard.inference.servicer import _server_version
from modelyard.inference.settings import WorkerSettings

log = logging.getLogger("modelyard.inference.rest")

T = TypeVar("T")

HEADER_LENGTH = "Inference-Header-Content-Length"
# Below these sizes parsing or encoding inline costs less than a hop to the executor.
_INLINE_BODY_BYTES = 64 * 1024
_INLINE_OUTPUT_ELEMENTS = 16 * 1024

# gRPC code -> HTTP status (Google's API mapping; 429 for a full worker, a retry may succeed).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class BodyTooLarge(ResourceExhausted):
    """The request body is larger than the worker's per-request byte budget (HTTP 413)."""


class UnsupportedEncoding(InvalidArgument):
    """The body's Content-Encoding is one the worker cannot decode (HTTP 415)."""


def http_status(error: ModelyardError) -> int:
    if isinstance(error, BodyTooLarge):
        return 413
    if isinstance(error, UnsupportedEncoding):
        return 415
    return HTTP_STATUS.get(error.code, 500)


async def read_body(request: Request, limit: int) -> bytes:
    """The (decompressed) body, refused as soon as it is known to exceed `limit` bytes: from its
    Content-Length before reading anything, else while it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(_too_large(int(declared), limit))
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none"
        )
    # gzip: wbits 16+15; deflate is the zlib format (what tritonclient sends), 15.
    inflater = None if encoding == "identity" else zlib.decompressobj(31 if encoding == "gzip" else 15)
    body = bytearray()
    try:
        async for chunk in request.stream():
            if inflater is not None:
                chunk = inflater.decompress(chunk, limit + 1 - len(body))
                if inflater.unconsumed_tail:
                    raise BodyTooLarge(_too_large(len(body) + len(chunk) + 1, limit, decoded=True))
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(_too_large(len(body), limit, decoded=inflater is not None))
        if inflater is not None:
            body += inflater.flush()
            if not inflater.eof:
                raise InvalidArgument(f"the {encoding} body ends before its compressed stream does")
    except zlib.error as error:
        raise InvalidArgument(f"the body is not valid {encoding} data: {error}") from None
    return bytes(body)


def _too_large(size: int, limit: int, *, decoded: bool = False) -> str:
    what = "decompressed body" if decoded else "body"
    return (
        f"the {what} is at least {size} bytes; this worker takes at most {limit} per request "
        "(max_message_bytes); split the batch"
    )


class _Endpoints:
    """The handlers; each runs inside `_scope` (request id, auth, error mapping)."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        authorizer: TokenAuthorizer,
        policy: AccessPolicy,
        max_body_bytes: int,
        executor: Executor,
        live: Callable[[], bool],
    ) -> None:
        self.dataplane = dataplane
        self.authorizer = authorizer
        self.policy = policy
        self.max_body_bytes = max_body_bytes
        self.executor = executor
        self.live = live

    def routes(self) -> list[Route]:
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        routes = [
            Route("/v2/health/live", self._open(self.server_live)),
            Route("/v2/health/ready", self._open(self.server_ready)),
            Route("/v2", self._guarded("ServerMetadata", self.server_metadata)),
            Route("/v2/", self._guarded("ServerMetadata", self.server_metadata)),
        ]
        for prefix in (model, versioned):
            routes += [
                Route(prefix, self._guarded("ModelMetadata", self.model_metadata)),
                Route(f"{prefix}/ready", self._guarded("ModelReady", self.model_ready)),
                Route(f"{prefix}/infer", self._guarded("ModelInfer", self.infer), methods=["POST"]),
            ]
        return routes

    def _open(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            with _scope(request) as rid:
                return await _answer(handler, request, rid)

        return endpoint

    def _guarded(
        self, method: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def checked(request: Request) -> Response:
            if self.authorizer.enabled:
                principal = self.authorizer.authenticate(request.headers.get("authorization"))
                self.authorizer.authorize(principal, method, self.policy)
            return await handler(request)

        async def endpoint(request: Request) -> Response:
            with _scope(request) as rid:
                return await _answer(checked, request, rid)

        return endpoint

    async def server_live(self, request: Request) -> Response:
        live = self.live()
        return JSONResponse({"live": live}, status_code=200 if live else 400)

    async def server_ready(self, request: Request) -> Response:
        # The spec and Triton answer "not ready" with a 4xx (400); a readiness probe fails on it.
        ready = self.live() and self.dataplane.ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 400)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(
            {"name": "modelyard-worker", "version": _server_version(), "extensions": ["binary_tensor_data"]}
        )

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model(request)
        meta = self.dataplane.model_metadata(name, version)
        document: dict[str, Any] = {
            "name": meta.name,
            "versions": meta.versions,
            "platform": meta.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
            "outputs": [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs
            ],
        }
        if meta.parameters:  # as on gRPC; MLServer's metadata has the same optional `parameters`
            document["parameters"] = meta.parameters
        return JSONResponse(document)

    async def model_ready(self, request: Request) -> Response:
        name, version = _model(request)
        self.dataplane.table.get(name)  # an unknown deployment is 404 (ModelNotFound), not "not ready"
        ready = self.dataplane.model_ready(name, version)
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 400)

    async def infer(self, request: Request) -> Response:
        name, version = _model(request)
        body = await read_body(request, self.max_body_bytes)
        header_length = parse_header_length(request.headers.get(HEADER_LENGTH), len(body))
        parsed, encoding = await self._run(
            len(body) >= _INLINE_BODY_BYTES, request_from_rest, body, header_length, name, version
        )
        client = request.client
        # A caller is one connection, as on gRPC (`context.peer()`): admission is fair between them.
        caller = f"http:{client.host}:{client.port}" if client else "http:unknown"
        response = await self.dataplane.infer(parsed, caller=caller)
        content, json_length = await self._run(
            output_elements(response) >= _INLINE_OUTPUT_ELEMENTS, response_to_rest, response, encoding
        )
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
        )

    async def _run(self, offload: bool, function: Callable[..., T], *args: Any) -> T:
        if not offload:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)


def _model(request: Request) -> tuple[str, str]:
    params = request.path_params
    return str(params["name"]), str(params.get("version", ""))


@contextlib.contextmanager
def _scope(request: Request) -> Iterator[str]:
    rid = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex[:16]
    token = request_id_var.set(rid)
    try:
        yield rid
    finally:
        request_id_var.reset(token)


async def _answer(handler: Callable[[Request], Awaitable[Response]], request: Request, rid: str) -> Response:
    try:
        response = await handler(request)
    except ModelyardError as error:
        status = http_status(error)
        level = logging.DEBUG if status == 429 else logging.INFO
        event(log, "http.error", level=level, path=request.url.path, status=status, code=error.code.name,
              detail=error.message)  # fmt: skip
        response = JSONResponse({"error": error.message}, status_code=status)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
    except ClientDisconnect:
        # The caller left while sending its body; nobody reads this answer.
        event(log, "http.client_gone", level=logging.DEBUG, path=request.url.path)
        response = Response(status_code=499)
    except Exception:
        log.exception("http.unexpected", extra={"fields": {"path": request.url.path}})
        response = JSONResponse(
            {"error": f"internal error; quote request id {rid} when reporting it"}, status_code=500
        )
    response.headers["x-request-id"] = rid
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths (404) and wrong methods (405) get a JSON error like every other answer."""
    assert isinstance(exc, HTTPException)
    detail = (
        f"no such endpoint: {request.method} {request.url.path}" if exc.status_code == 404 else exc.detail
    )
    return JSONResponse({"error": detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(
    dataplane: DataPlane,
    *,
    authorizer: TokenAuthorizer,
    policy: AccessPolicy,
    max_body_bytes: int,
    executor: Executor,
    live: Callable[[], bool] = lambda: True,
) -> Starlette:
    endpoints = _Endpoints(
        dataplane,
        authorizer=authorizer,
        policy=policy,
        max_body_bytes=max_body_bytes,
        executor=executor,
        live=live,
    )
    return Starlette(routes=endpoints.routes(), exception_handlers={HTTPException: _http_error})


class OipHttpServer:
    """uvicorn serving `app` on the worker's host and `http_port`, HTTPS with its TLS settings."""

    def __init__(self, settings: WorkerSettings, app: Starlette) -> None:
        if settings.http_port is None:
            raise ValueError("http_port is None: the worker serves no OIP over HTTP")
        if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        self.settings = settings
        # Bound now, like the gRPC port: a port in use fails the worker before anything starts.
        self._sock = bind_tcp(settings.host, settings.http_port, "the OIP HTTP port", backlog=1024)
        host, port = self._sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        client_ca = settings.tls_client_ca_file
        self._server = SignallessUvicorn(
            uvicorn.Config(
                app,
                http="h11",
                ws="none",
                lifespan="off",
                log_config=None,
                access_log=False,
                proxy_headers=False,
                server_header=False,
                ssl_certfile=settings.tls_cert_file,
                ssl_keyfile=settings.tls_key_file,
                ssl_ca_certs=client_ca,
                ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE,
                timeout_graceful_shutdown=max(1, math.ceil(settings.grace_period_s)),
            )
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls_cert_file else "http"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="oip-http")
        # uvicorn only flips a flag once it listens (no event to await).
        while not self._server.started and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()
            raise RuntimeError("the OIP HTTP server stopped while starting")
        if not self.settings.tls_cert_file and not is_loopback(self.settings.host):
            event(log, "server.plaintext", level=logging.WARNING, component="worker-http", address=self.address,
                  detail="OIP over HTTP beyond this machine without TLS: requests and tokens travel in clear "
                  "text; set MODELYARD_TLS_CERT_FILE and MODELYARD_TLS_KEY_FILE")  # fmt: skip
        event(log, "http.started", component="worker", address=self.address,
              url=f"{self.scheme}://{self.address}/v2")  # fmt: skip

    def request_stop(self) -> None:
        """Stop accepting connections; requests in flight finish within the grace period."""
        self._server.should_exit = True

    async def stop(self) -> None:
        self.request_stop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sock.close()
        event(log, "http.stopped", component="worker")
