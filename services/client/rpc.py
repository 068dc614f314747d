"""What every Modelyard client shares: one call path per RPC kind (token, request id, default
deadline) and the one mapping from a failed call to `ModelyardError`.

An RPC is declared once, as a class attribute (`get_deployment = Unary(...)`), and works on both
client flavours: awaited on an `AsyncClient` (grpc.aio), returned on a `SyncClient` (grpc).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar, overload

import grpc
from google.protobuf.message import Message
from grpc import aio

from modelyard.client.channel import open_aio_channel, open_sync_channel, retry_service_config
from modelyard.client.settings import ClientSettings
from modelyard.common.errors import ModelyardError, error_for_status

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Self = TypeVar("Self", bound="_Client")

REQUEST_ID = "x-request-id"


def error_from_rpc(error: grpc.RpcError, *, target: str, method: str, request_id: str) -> ModelyardError:
    """The ModelyardError for a failed call: the server's status and details, or what the channel
    says when nothing answered; the request id the server logged it under."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else "") or ""
    return error_for_status(
        code, details or f"{method} on {target} failed with {code.name}", request_id=request_id
    )


class _Client:
    """A channel to one server, its settings, and what each call sends besides its request."""

    service: ClassVar[str]

    def __init__(self, address: str, settings: ClientSettings | None = None, **overrides: Any) -> None:
        """`settings` defaults to ClientSettings() (MODELYARD_TOKEN, MODELYARD_TLS, ...);
        `overrides` replace single fields, e.g. `token=`, `tls=True`, `timeout_s=5`."""
        base = settings if settings is not None else ClientSettings()
        self.address = address
        self.settings = base.model_copy(update=overrides) if overrides else base

    def _service_config(self) -> str:
        idempotent = [
            (self.service, rpc.method)
            for klass in type(self).__mro__
            for rpc in vars(klass).values()
            if isinstance(rpc, _Rpc) and rpc.idempotent
        ]
        return retry_service_config(idempotent, self.settings.retry_attempts)

    def _metadata(self) -> tuple[tuple[tuple[str, str | bytes], ...], str]:
        """What each call sends besides its request: a fresh request id (the server logs it and
        quotes it in INTERNAL errors) and the token."""
        request_id = uuid.uuid4().hex[:16]
        if self.settings.token:
            return ((REQUEST_ID, request_id), ("authorization", f"Bearer {self.settings.token}")), request_id
        return ((REQUEST_ID, request_id),), request_id

    def _path(self, method: str) -> str:
        return f"/{self.service}/{method}"


class AsyncClient(_Client):
    """Base of the grpc.aio clients: `async with Client(address) as client: await client.x(...)`."""

    def __init__(self, address: str, settings: ClientSettings | None = None, **overrides: Any) -> None:
        super().__init__(address, settings, **overrides)
        self.channel: aio.Channel = open_aio_channel(address, self.settings, self._service_config())

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self: Self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()


class SyncClient(_Client):
    """Base of the blocking clients: `with Client(address) as client: client.x(...)`."""

    def __init__(self, address: str, settings: ClientSettings | None = None, **overrides: Any) -> None:
        super().__init__(address, settings, **overrides)
        self.channel: grpc.Channel = open_sync_channel(address, self.settings, self._service_config())

    def close(self) -> None:
        self.channel.close()

    def __enter__(self: Self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class _Rpc:
    def __init__(self, method: str, response: type[Message], *, idempotent: bool = False) -> None:
        self.method = method
        self.response = response
        self.idempotent = idempotent


class _AsyncUnaryCall(Generic[Req, Resp]):
    def __init__(self, rpc: Unary[Req, Resp], client: AsyncClient) -> None:
        self._rpc, self._client = rpc, client

    async def __call__(self, request: Req, *, timeout: float | None = None) -> Resp:
        client, rpc = self._client, self._rpc
        call = client.channel.unary_unary(
            client._path(rpc.method),
            request_serializer=type(request).SerializeToString,
            response_deserializer=rpc.response.FromString,
        )
        metadata, request_id = client._metadata()
        try:
            response: Resp = await call(
                request, timeout=client.settings.timeout_s if timeout is None else timeout, metadata=metadata
            )
        except grpc.RpcError as error:
            raise error_from_rpc(
                error, target=client.address, method=rpc.method, request_id=request_id
            ) from None
        return response


class _SyncUnaryCall(Generic[Req, Resp]):
    def __init__(self, rpc: Unary[Req, Resp], client: SyncClient) -> None:
        self._rpc, self._client = rpc, client

    def __call__(self, request: Req, *, timeout: float | None = None) -> Resp:
        client, rpc = self._client, self._rpc
        call = client.channel.unary_unary(
            client._path(rpc.method),
            request_serializer=type(request).SerializeToString,
            response_deserializer=rpc.response.FromString,
        )
        metadata, request_id = client._metadata()
        try:
            response: Resp = call(
                request, timeout=client.settings.timeout_s if timeout is None else timeout, metadata=metadata
            )
        except grpc.RpcError as error:
            raise error_from_rpc(
                error, target=client.address, method=rpc.method, request_id=request_id
            ) from None
        return response


class Unary(_Rpc, Generic[Req, Resp]):
    """A unary RPC. The default deadline is the settings' `timeout_s`; pass `timeout=` to change it."""

    def __init__(
        self, method: str, request: type[Req], response: type[Resp], *, idempotent: bool = False
    ) -> None:
        super().__init__(method, response, idempotent=idempotent)

    @overload
    def __get__(self, client: None, owner: type) -> Unary[Req, Resp]: ...
    @overload
    def __get__(self, client: AsyncClient, owner: type) -> _AsyncUnaryCall[Req, Resp]: ...
    @overload
    def __get__(self, client: SyncClient, owner: type) -> _SyncUnaryCall[Req, Resp]: ...
    def __get__(self, client: _Client | None, owner: type) -> Any:
        if client is None:
            return self
        if isinstance(client, AsyncClient):
            return _AsyncUnaryCall(self, client)
        assert isinstance(client, SyncClient)
        return _SyncUnaryCall(self, client)


class _AsyncStreamCall(Generic[Req, Resp]):
    def __init__(self, rpc: ServerStream[Req, Resp], client: AsyncClient) -> None:
        self._rpc, self._client = rpc, client

    async def __call__(self, request: Req, *, timeout: float | None = None) -> AsyncIterator[Resp]:
        """The stream's messages; leaving the loop early cancels the call."""
        client, rpc = self._client, self._rpc
        call = client.channel.unary_stream(
            client._path(rpc.method),
            request_serializer=type(request).SerializeToString,
            response_deserializer=rpc.response.FromString,
        )
        metadata, request_id = client._metadata()
        stream = call(request, timeout=timeout, metadata=metadata)
        try:
            async for message in stream:
                yield message
        except grpc.RpcError as error:
            raise error_from_rpc(
                error, target=client.address, method=rpc.method, request_id=request_id
            ) from None
        finally:
            stream.cancel()


class _SyncStreamCall(Generic[Req, Resp]):
    def __init__(self, rpc: ServerStream[Req, Resp], client: SyncClient) -> None:
        self._rpc, self._client = rpc, client

    def __call__(self, request: Req, *, timeout: float | None = None) -> Iterator[Resp]:
        client, rpc = self._client, self._rpc
        call = client.channel.unary_stream(
            client._path(rpc.method),
            request_serializer=type(request).SerializeToString,
            response_deserializer=rpc.response.FromString,
        )
        metadata, request_id = client._metadata()
        stream = call(request, timeout=timeout, metadata=metadata)
        try:
            yield from stream
        except grpc.RpcError as error:
            raise error_from_rpc(
                error, target=client.address, method=rpc.method, request_id=request_id
            ) from None
        finally:
            stream.cancel()


class ServerStream(_Rpc, Generic[Req, Resp]):
    """A server-streaming RPC: iterate the call (`async for` on an AsyncClient). No deadline by
    default, since watch and benchmark streams are long-lived; pass `timeout=` to set one."""

    def __init__(self, method: str, request: type[Req], response: type[Resp]) -> None:
        super().__init__(method, response)

    @overload
    def __get__(self, client: None, owner: type) -> ServerStream[Req, Resp]: ...
    @overload
    def __get__(self, client: AsyncClient, owner: type) -> _AsyncStreamCall[Req, Resp]: ...
    @overload
    def __get__(self, client: SyncClient, owner: type) -> _SyncStreamCall[Req, Resp]: ...
    def __get__(self, client: _Client | None, owner: type) -> Any:
        if client is None:
            return self
        if isinstance(client, AsyncClient):
            return _AsyncStreamCall(self, client)
        assert isinstance(client, SyncClient)
        return _SyncStreamCall(self, client)
