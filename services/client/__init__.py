"""Modelyard's client library: the registry, inference workers and the benchmark service, each as
an async client (grpc.aio; `async with`) with a blocking twin in `modelyard.client.sync`.

    from modelyard.client.sync import InferenceClient
    with InferenceClient("127.0.0.1:8001", token="...") as worker:
        result = worker.embed_texts("text-embedding", ["a red fox"])
    print(result.version, result.vectors.shape)

Every failed call raises `ModelyardError` (a subclass per status: NotFound, InvalidArgument, ...)
with `code`, `message` and the `request_id` the server logged it under. Address-independent
settings (token, TLS, default deadline, retries) come from `ClientSettings` (environment
MODELYARD_TOKEN, MODELYARD_TLS, MODELYARD_TLS_CA_FILE, MODELYARD_TIMEOUT_S, ...) or keyword overrides.
Needs grpcio, protobuf, numpy and pydantic-settings only: no torch, no PostgreSQL.
"""

from modelyard.client.benchmark import BenchmarkClient
from modelyard.client.inference import Captions, Embeddings, InferenceClient
from modelyard.client.registry import RegistryClient
from modelyard.client.settings import ClientSettings
from modelyard.common.errors import ModelyardError

__all__ = [
    "BenchmarkClient",
    "Captions",
    "ClientSettings",
    "Embeddings",
    "InferenceClient",
    "ModelyardError",
    "RegistryClient",
]
