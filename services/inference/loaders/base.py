"""What every model family's runtime implements; the data plane calls these from executor threads."""

from __future__ import annotations

import ctypes
import functools
import gc
import io
import itertools
import logging
import mmap
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.common.log import event
from modelyard.common.modelspec import Signature, TensorSpec
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
    # What `modelyard loaders list` shows: the model type of this loader's versions (a registry
    # model type: text_embedding, image_embedding, captioning or generic; empty: read from each
    # version's signature by `models import`) and the tensors their signatures have (-1: a size
    # each model sets).
    model_type: ClassVar[str] = ""
    declared_inputs: ClassVar[tuple[TensorSpec, ...]] = ()
    declared_outputs: ClassVar[tuple[TensorSpec, ...]] = ()
    # The family's torch module once loaded (None before `load` and after `unload`): `warmup`
    # maps its weights in.
    model: Any = None

    @classmethod
    def preimport(cls) -> None:
        """Import the family's libraries, so a worker can do it once at start (see `preimport_all`)."""
        import torch  # noqa: F401

    def __init__(
        self, spec: VersionSpec, path: Path, *, allow_remote_code: bool = False, pass_threads: int = 1
    ) -> None:
        self.spec = spec
        self.path = path
        self.device = "cpu"
        # What runs the passes ("torch", or what `optimize` switched to), and why not the engine
        # the version asked for when it fell back.
        self.engine = "torch"
        self.engine_note = ""
        # Intra-op threads of one serving lane, for engines that fix them when built (onnxruntime).
        self.pass_threads = max(1, pass_threads)
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

    def prepare_request(
        self, input_name: str, items: list[bytes], parameters: Mapping[str, str]
    ) -> list[Any]:
        """`prepare` for one request, given the request parameters the version reads: those its
        `signature().parameters` declare, each already checked against its choices by the data
        plane (the request's other parameters are not passed). The data plane calls this; a
        runtime that reads no parameters only implements `prepare`, which this calls."""
        return self.prepare(input_name, items)

    def prepare_is_cheap(self, input_name: str) -> bool:
        """True when `prepare` is cheap enough to run on the event loop (e.g. UTF-8 decoding)."""
        return False

    def item_lengths(self, input_name: str, items: list[Any]) -> list[int] | None:
        """Each prepared element's cost in a pass, in tokens or an estimate, when elements differ
        (text length): the batcher groups passes and splits large requests by it, and bounds a pass
        by `max_batch_tokens` of it. None when every element costs the same."""
        return None

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
        """Map the torch weights in (when torch runs the passes on CPU), then run the sample
        elements through `predict`."""
        if self.model is not None and self.device == "cpu" and self.engine == "torch":
            page_in(self.model)
        for name, items in self.warmup_items().items():
            self.predict(name, self.prepare(name, items))

    def unload(self) -> None:
        """Drop references to weights and give memory back (CUDA cache included)."""
        begun = time.perf_counter()
        self._release()
        released = time.perf_counter()
        gc.collect()
        collected = time.perf_counter()
        _trim_heap()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        event(log, "model.unloaded", model=self.spec.model_id, version=self.spec.version,
              seconds=round(time.perf_counter() - begun, 3), gc_s=round(collected - released, 3))  # fmt: skip

    @abstractmethod
    def _release(self) -> None: ...


# madvise(2) advice: fault a range's pages in for reading (Linux 5.14 and later).
_MADV_POPULATE_READ = 22


def page_in(module: Any) -> int:
    """Map every page of the module's CPU parameters and buffers into the process now; returns the
    bytes asked for. Safetensors weights are mapped from the file, and a pass faults in only the
    pages it reads: a warmup reads a few rows of the token embeddings (MiniLM: 41 of its 86 MiB
    resident), and later requests with other tokens fault in the rest, one page at a time, while
    they are served (a disk read if the kernel dropped the page). This maps them before the version
    serves (MiniLM 2 ms, mpnet 10 ms, the pages in the page cache), so its memory is what it shows
    at load. Packed int8 weights are in the heap already; a kernel without the advice skips it."""
    libc = _libc()
    if libc is None:
        return 0
    page = mmap.PAGESIZE
    ranges: dict[int, int] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.device.type != "cpu" or not tensor.numel():
            continue
        start = tensor.data_ptr()
        ranges[start] = max(ranges.get(start, 0), tensor.numel() * tensor.element_size())
    asked = 0
    for start, size in ranges.items():
        aligned = start - start % page
        if libc.madvise(aligned, start + size - aligned, _MADV_POPULATE_READ) != 0:
            return asked  # EINVAL on kernels before 5.14: pages fault in as they are read
        asked += size
    return asked


@functools.cache
def _libc() -> Any:
    """glibc, for the heap and mapping calls above and below; None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.malloc_trim  # noqa: B018  (glibc has it; another libc called libc.so.6 may not)
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise, and RSS never drops)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def apply_precision(module: Any, spec: VersionSpec, device: str) -> Any:
    """fp16 on CUDA when asked; int8 dynamic quantization of Linear layers on CPU when asked."""

    config = spec.config
    if device.startswith("cuda") and config.dtype == "float16":
        return module.half()
    if config.quantization == "int8-dynamic":
        if device != "cpu":
            raise UnsupportedConfig("int8-dynamic quantization runs on CPU only; set device to `cpu`")
        return quantize_linears_int8(module)
    if config.quantization:
        raise UnsupportedConfig(f"unknown quantization {config.quantization!r}; use `` or `int8-dynamic`")
    return module


def quantize_linears_int8(module: Any) -> Any:
    """`torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=qint8, inplace=True)`,
    bit for bit, in about half its time: torch builds each quantized Linear around a full-size
    placeholder weight and packs it before packing the real one (MiniLM: 111 packs for 37 layers,
    60-90 ms of a swap, GIL held). Here each layer is packed once. Modules torch would treat
    otherwise (hooks, parametrizations, fused or pre-configured modules, one layer under two
    names) go through torch's own path."""
    import warnings

    import torch
    from torch.ao.nn.intrinsic import _FusedModule
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.nn.quantized.modules.utils import _quantize_weight
    from torch.ao.quantization.qconfig import default_dynamic_qconfig
    from torch.nn.utils.parametrize import is_parametrized

    slots = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent._modules.items()
        if type(child) is torch.nn.Linear
    ]
    plain = (
        len({id(child) for _, _, child in slots}) == len(slots)
        and not any(child._forward_pre_hooks or child._forward_hooks for _, _, child in slots)
        and not any(
            is_parametrized(m) or isinstance(m, _FusedModule) or hasattr(m, "qconfig")
            for m in module.modules()
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensor creation is deprecated upstream
        if not plain:
            return torch.ao.quantization.quantize_dynamic(
                module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
            )
        for parent, name, child in slots:
            observer = default_dynamic_qconfig.weight()
            observer(child.weight)
            quantized = DynamicLinear(1, 1, dtype=torch.qint8)  # packs a 1x1 stand-in, not [out, in]
            quantized.in_features, quantized.out_features = child.in_features, child.out_features
            quantized.set_weight_bias(_quantize_weight(child.weight.float(), observer), child.bias)
            parent._modules[name] = quantized
    return module


_LOADERS: dict[str, type[ModelRuntime]] = {}
# Loader name -> where it came from: "built-in", or the distribution of a plugin ("name version").
_ORIGINS: dict[str, str] = {}
# Third-party loaders: entry points `NAME = module:Class` in this group, NAME the class's loader_name.
PLUGIN_GROUP = "modelyard.loaders"
# Plugins left out: (entry point name, origin, reason).
REFUSED_PLUGINS: list[tuple[str, str, str]] = []


def register_loader(cls: type[ModelRuntime]) -> type[ModelRuntime]:
    _LOADERS[cls.loader_name] = cls
    _ORIGINS.setdefault(
        cls.loader_name, "built-in" if cls.__module__.startswith("modelyard.") else cls.__module__
    )
    return cls


def load_plugins() -> list[str]:
    """Register every installed plugin loader (entry-point group `modelyard.loaders`); return their
    names. A plugin that fails to import, is not a ModelRuntime named as its entry point, or takes
    a name already registered is left out, with the reason in event `loader.plugin_refused`: one
    broken plugin never stops a worker. Plugins are installed code, chosen by whoever installs
    the worker; nothing here runs code from an artifact."""
    from importlib.metadata import entry_points

    loaded = []
    for point in entry_points(group=PLUGIN_GROUP):
        origin = f"{point.dist.name} {point.dist.version}" if point.dist is not None else point.value
        try:
            cls = point.load()
        except Exception as exc:
            _refuse(point.name, origin, f"import failed: {type(exc).__name__}: {exc}")
            continue
        if not (isinstance(cls, type) and issubclass(cls, ModelRuntime)):
            _refuse(point.name, origin, f"{point.value} is not a ModelRuntime subclass")
            continue
        if getattr(cls, "loader_name", None) != point.name:
            _refuse(point.name, origin, f"its class names loader {getattr(cls, 'loader_name', None)!r}")
            continue
        if _LOADERS.get(point.name, cls) is not cls:
            _refuse(point.name, origin, f"loader {point.name!r} is already {_ORIGINS.get(point.name)}")
            continue
        _LOADERS[point.name] = cls
        _ORIGINS[point.name] = origin
        loaded.append(point.name)
    return loaded


def _refuse(name: str, origin: str, reason: str) -> None:
    REFUSED_PLUGINS.append((name, origin, reason))
    event(log, "loader.plugin_refused", level=logging.WARNING,
          loader=name, origin=origin, reason=reason)  # fmt: skip


def loader_info() -> list[dict[str, Any]]:
    """Every registered loader: name, model type, declared inputs and outputs, origin."""

    def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]

    return [
        {
            "name": name,
            "model_type": cls.model_type or "by signature",
            "inputs": tensors(cls.declared_inputs),
            "outputs": tensors(cls.declared_outputs),
            "origin": _ORIGINS.get(name, "built-in"),
        }
        for name, cls in sorted(_LOADERS.items())
    ]


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


def create_runtime(
    spec: VersionSpec, path: Path, *, allow_remote_code: bool = False, pass_threads: int = 1
) -> ModelRuntime:
    try:
        cls = _LOADERS[spec.loader]
    except KeyError:
        raise UnknownLoader(
            f"version {spec.model_id}:{spec.version} names loader {spec.loader!r}; "
            f"this worker has {', '.join(loader_names())}"
        ) from None
    return cls(spec, path, allow_remote_code=allow_remote_code, pass_threads=pass_threads)
