"""The blocking twins of `modelyard.client`'s clients, under the same names."""

from modelyard.client.benchmark import SyncBenchmarkClient as BenchmarkClient
from modelyard.client.inference import Captions, Embeddings
from modelyard.client.inference import SyncInferenceClient as InferenceClient
from modelyard.client.registry import SyncRegistryClient as RegistryClient
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
