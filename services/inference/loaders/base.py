"""What every model family's runtime implements; the data plane calls these from executor threads."""

from __future__ import annotations

import ctypes
import gc
import io
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.common.log import event
from modelyard.common.modelspec import Signature
from modelyard.inference.domain import VersionSpec
from modelyard.inference.errors import BadInput, UnknownLoader, UnsupportedConfig

log = logging.getLogger("modelyard.inference.loaders")

# What a runtime returns per output name: an [N, ...] array, or N encoded byte strings.
Outputs = dict[str, "np.ndarray | list[bytes]"]


def resolve_device(requested: str) -> str:
    """`auto` -> CUDA when present, else CPU; an explicit CUDA device must exist."""
    import torch

    requested = (requested or "auto").lower()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedConfig(
            f"the version asks for device {requested!r} but this worker has no CUDA device; "
            "set inference_config.device to `auto` or `cpu`"
        )
    return requested


def intra_op_threads() -> int:
    """Torch's intra-op thread count in the calling thread (by default, one per core)."""
    import torch

    return int(torch.get_num_threads())


def use_intra_op_threads(count: int) -> None:
    """Make torch ops called from this thread use `count` intra-op threads (an executor initializer;
    see `worker.plan_lanes` for why the counts matter)."""
    import torch

    torch.set_num_threads(count)


def decode_texts(items: list[bytes], name: str) -> list[str]:
    """UTF-8 bytes -> str. The data plane has checked each element's size against the version's
    limit before this (`limits.TextLimit`): decoding and tokenizing cost grows with the bytes."""
    try:
        return [item.decode("utf-8") for item in items]
    except UnicodeDecodeError as exc:
        index = next(i for i, item in enumerate(items) if not _is_utf8(item))
        raise BadInput(f"input {name!r}: element {index} is not valid UTF-8 ({exc.reason})") from exc


def _is_utf8(item: bytes) -> bool:
    try:
        item.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode_images(items: list[bytes], name: str) -> list[Any]:
    """Encoded PNG/JPEG/... -> RGB PIL images; undecodable bytes are the caller's error."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for index, item in enumerate(items):
        try:
            with Image.open(io.BytesIO(item)) as image:
                image.load()
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise BadInput(
                f"input {name!r}: element {index} is not a decodable image ({type(exc).__name__}); "
                "send encoded PNG or JPEG bytes"
            ) from exc
    return images


class ModelRuntime(ABC):
    """One loaded model version. All methods block: call them from an executor, never the loop."""

    loader_name: ClassVar[str]

    @classmethod
    def preimport(cls) -> None:
        """Import the family's libraries, so a worker can do it once at start (see `preimport_all`)."""
        import torch  # noqa: F401

    def __init__(self, spec: VersionSpec, path: Path, *, allow_remote_code: bool = False) -> None:
        self.spec = spec
        self.path = path
        self.device = "cpu"
        # The worker operator's setting: code from the artifact runs only when it and the version
        # both say so (see `remote_code.trust_remote_code`).
        self.allow_remote_code = allow_remote_code

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def signature(self) -> Signature: ...

    @abstractmethod
    def prepare(self, input_name: str, items: list[bytes]) -> list[Any]:
        """Validate and decode one request's elements of one input, before batching."""

    def prepare_is_cheap(self, input_name: str) -> bool:
        """True when `prepare` is cheap enough to run on the event loop (e.g. UTF-8 decoding)."""
        return False

    @abstractmethod
    def predict(self, input_name: str, items: list[Any]) -> Outputs:
        """Run one batch of prepared elements of one input."""

    @abstractmethod
    def warmup_items(self) -> dict[str, list[bytes]]:
        """Encoded sample elements per input, used by `warmup`."""

    def optimize(self) -> None:
        """Called after `load`, before `warmup`: may switch `predict` to a faster implementation
        that gives the same outputs (checked, not assumed). Does nothing after `unload`."""
        return None

    def warmup(self) -> None:
        for name, items in self.warmup_items().items():
            self.predict(name, self.prepare(name, items))

    def unload(self) -> None:
        """Drop references to weights and give memory back (CUDA cache included)."""
        self._release()
        gc.collect()
        _trim_heap()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        event(log, "model.unloaded", model=self.spec.model_id, version=self.spec.version)

    @abstractmethod
    def _release(self) -> None: ...


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise, and RSS never drops)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def apply_precision(module: Any, spec: VersionSpec, device: str) -> Any:
    """fp16 on CUDA when asked; int8 dynamic quantization of Linear layers on CPU when asked."""
    import torch

    config = spec.config
    if device.startswith("cuda") and config.dtype == "float16":
        return module.half()
    if config.quantization == "int8-dynamic":
        if device != "cpu":
            raise UnsupportedConfig("int8-dynamic quantization runs on CPU only; set device to `cpu`")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(
                module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
            )
    if config.quantization:
        raise UnsupportedConfig(f"unknown quantization {config.quantization!r}; use `` or `int8-dynamic`")
    return module


_LOADERS: dict[str, type[ModelRuntime]] = {}


def register_loader(cls: type[ModelRuntime]) -> type[ModelRuntime]:
    _LOADERS[cls.loader_name] = cls
    return cls


def preimport_all() -> None:
    """Import every family's libraries. Blocking; call from an executor.

    They leave hundreds of thousands of long-lived objects behind; the worker then freezes them out
    of the cyclic GC (`freeze_startup_objects`), so a full collection (needed to free an unloaded
    model, whose modules hold reference cycles) takes milliseconds instead of a GIL-holding ~0.3 s
    that stalls serving.
    """
    for cls in _LOADERS.values():
        cls.preimport()


def loader_names() -> list[str]:
    return sorted(_LOADERS)


def create_runtime(spec: VersionSpec, path: Path, *, allow_remote_code: bool = False) -> ModelRuntime:
    try:
        cls = _LOADERS[spec.loader]
    except KeyError:
        raise UnknownLoader(
            f"version {spec.model_id}:{spec.version} names loader {spec.loader!r}; "
            f"this worker has {', '.join(loader_names())}"
        ) from None
    return cls(spec, path, allow_remote_code=allow_remote_code)
