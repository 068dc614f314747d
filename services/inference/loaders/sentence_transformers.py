"""`sentence-transformers` loader: text -> L2-normalized (when the model says so) embeddings.

Forward passes run a TorchScript trace of the model's whole module chain (transformer, pooling,
normalization), so a pass is tokenization plus one C++ call: no Python per layer, and two passes on
two threads barely contend for the GIL. Each trace is checked against `SentenceTransformer.encode`
on batches of other shapes than it was traced with; a model that cannot be traced, or whose trace
disagrees, is served through `encode` (event `model.trace_skipped` says why).

`torch.jit.trace` defines new TorchScript types in the process-wide compilation unit on every call,
and those are never freed (a fresh trace per load grew a worker by ~21 MB per fp32+int8 swap
cycle). So each architecture (int8 and fp32 count as two) is traced once per process, and the
trace kept as a template holding placeholders; every version gets a copy of it with its own
tensors and packed int8 weights bound in, sharing storage with the loaded model. RSS then stays
flat over any number of swaps.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import threading
import warnings
from typing import Any, ClassVar

import numpy as np

from modelyard.common.log import event
from modelyard.common.modelspec import Signature, TensorSpec
from modelyard.inference.errors import BadInput
from modelyard.inference.loaders.base import (
    ModelRuntime,
    Outputs,
    apply_precision,
    decode_texts,
    register_loader,
    resolve_device,
)
from modelyard.inference.loaders.remote_code import check_sentence_transformer, trust_remote_code

log = logging.getLogger("modelyard.inference.loaders")

# Traced with the first batch, checked on the others: other batch sizes, other sequence lengths.
_TRACE_SAMPLES: list[list[str]] = [
    ["warm up", "a slightly longer warm up sentence for the model"],
    ["one"],
    [
        "Three sentences of different lengths.",
        "short",
        "A much longer sentence that is there to make the padded sequence length differ from every "
        "batch before it, so a trace that baked in a shape would give itself away here.",
    ],
]


# Architecture key -> a traced module chain whose tensors are all empty placeholders.
_TEMPLATES: dict[str, Any] = {}
_TEMPLATES_LOCK = threading.Lock()


@register_loader
class SentenceTransformerRuntime(ModelRuntime):
    loader_name: ClassVar[str] = "sentence-transformers"

    model: Any = None
    traced: Any = None  # the TorchScript chain, or None to serve through `encode`
    _feature_names: tuple[str, ...] = ()

    @classmethod
    def preimport(cls) -> None:
        import sentence_transformers  # noqa: F401

    def load(self) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        trust = trust_remote_code(self.spec, self.allow_remote_code)
        check_sentence_transformer(self.spec, self.path, trusted=trust)
        self.device = resolve_device(self.spec.config.device)
        model = SentenceTransformer(
            str(self.path),
            device=self.device,
            local_files_only=True,
            trust_remote_code=trust,
        )
        if self.spec.config.max_sequence_length > 0:
            model.max_seq_length = self.spec.config.max_sequence_length
        model.eval()
        with torch.inference_mode():
            self.model = apply_precision(model, self.spec, self.device)
        self.dim = int(self.model.get_embedding_dimension() or 0)

    def optimize(self) -> None:
        self.traced = self._trace()

    def _trace(self) -> Any:
        import torch

        model = self.model
        if model is None:  # unloaded meanwhile
            return None
        if model.default_prompt_name:
            return self._skip_trace("the model prepends a default prompt, which only `encode` applies")
        try:  # whatever goes wrong here, the version still serves, through `encode`
            features = model.preprocess(_TRACE_SAMPLES[0])
            names = tuple(k for k, v in features.items() if isinstance(v, torch.Tensor))
            constants = {k: v for k, v in features.items() if not isinstance(v, torch.Tensor)}
            chain = _module_chain_class()(model, names, constants)
            tensors = _named_tensors(chain) + _script_objects(chain)
            key = _architecture_key(chain, self.device)
            with _TEMPLATES_LOCK:
                template = _TEMPLATES.get(key)
                if template is None:
                    with torch.inference_mode(), warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # TracerWarnings on shape checks; verified below
                        traced = torch.jit.trace(
                            chain,
                            tuple(features[k].to(self.device) for k in names),
                            check_trace=False,
                            strict=False,
                        )
                    _TEMPLATES[key] = _bind(copy.deepcopy(traced), _placeholders(tensors))
                else:
                    traced = _bind(copy.deepcopy(template), tensors)
            tolerance = 1e-3 if self.spec.config.dtype == "float16" else 1e-5
            for batch in _TRACE_SAMPLES[1:]:
                expected = self._encode(batch)
                got = self._run_traced(traced, names, batch)
                if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=tolerance):
                    return self._skip_trace("the trace disagrees with encode on a batch of another shape")
        except Exception as exc:
            return self._skip_trace(f"tracing failed: {type(exc).__name__}: {exc}")
        self._feature_names = names
        event(log, "model.traced", model=self.spec.model_id, version=self.spec.version,
              reused=template is not None)  # fmt: skip
        return traced

    def _skip_trace(self, reason: str) -> None:
        event(log, "model.trace_skipped", level=logging.WARNING, model=self.spec.model_id,
              version=self.spec.version, reason=reason)  # fmt: skip

    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec("text", "BYTES", (-1,)),),
            outputs=(TensorSpec("embedding", "FP32", (-1, self.dim)),),
            embedding_dim=self.dim,
        )

    def prepare(self, input_name: str, items: list[bytes]) -> list[Any]:
        if input_name != "text":
            raise BadInput(f"input {input_name!r} is not accepted; this model takes `text` BYTES [N]")
        return decode_texts(items, input_name)

    def prepare_is_cheap(self, input_name: str) -> bool:
        return input_name == "text"

    def predict(self, input_name: str, items: list[Any]) -> Outputs:
        traced = self.traced  # read once: `optimize` may switch it on another thread
        if traced is None:
            return {"embedding": self._encode(items)}
        return {"embedding": self._run_traced(traced, self._feature_names, items)}

    def _encode(self, items: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            vectors = self.model.encode(
                items, batch_size=max(1, len(items)), convert_to_numpy=True, show_progress_bar=False
            )
        return np.asarray(vectors, dtype=np.float32)

    def _run_traced(self, traced: Any, names: tuple[str, ...], items: list[str]) -> np.ndarray:
        import torch

        features = self.model.preprocess(items)
        # Plain execution: the profiling executor re-profiles new batch shapes (a first call took
        # 54-80 ms instead of 21-24) and steady passes measured no faster with it on CPU.
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            vectors = traced(*(features[k].to(self.device) for k in names))
        return np.asarray(vectors.float().cpu().numpy(), dtype=np.float32)

    def warmup_items(self) -> dict[str, list[bytes]]:
        return {"text": [b"warm up", b"a slightly longer warm up sentence for the model"]}

    def _release(self) -> None:
        self.model = None
        self.traced = None


@functools.cache
def _module_chain_class() -> type:
    import torch

    class ModuleChain(torch.nn.Module):
        """The model's modules as one function of the tokenizer's tensors, for `torch.jit.trace`."""

        def __init__(self, model: Any, names: tuple[str, ...], constants: dict[str, Any]) -> None:
            super().__init__()
            self.model = model
            self.names = names
            self.constants = constants

        def forward(self, *tensors: Any) -> Any:
            features = {**self.constants, **dict(zip(self.names, tensors, strict=True))}
            return self.model(features)["sentence_embedding"]

    return ModuleChain


def _named_tensors(module: Any) -> list[tuple[str, Any]]:
    """Every parameter and buffer by dotted name, tied ones under each of their names."""
    return [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]


def _script_objects(module: Any) -> list[tuple[str, Any]]:
    """TorchScript class instances held by submodules, by dotted name: a dynamic-int8 Linear keeps
    its packed weights in one. A trace holds these as attributes, like tensors."""
    import torch

    return [
        (f"{prefix}.{attr}" if prefix else attr, value)
        for prefix, submodule in module.named_modules(remove_duplicate=False)
        for attr, value in vars(submodule).items()
        if torch._C._jit_is_script_object(value)
    ]


def _placeholders(values: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Same-typed stand-ins that hold (next to) no memory, for a template."""
    import torch

    stand_ins = []
    for name, value in values:
        if isinstance(value, torch.Tensor):
            stand_ins.append((name, torch.empty(0, dtype=value.dtype, device=value.device)))
        elif value._type().qualified_name().endswith(".quantized.LinearPackedParamsBase"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # quantized tensor creation is deprecated upstream
                weight = torch.quantize_per_tensor(torch.zeros(1, 1), 1.0, 0, torch.qint8)
            stand_ins.append((name, torch.ops.quantized.linear_prepack(weight, None)))
        else:
            raise TypeError(f"{name} is a {value._type().qualified_name()}, which a template cannot hold")
    return stand_ins


def _bind(traced: Any, tensors: list[tuple[str, Any]]) -> Any:
    """Point the traced module's parameters, buffers and packed weights at `tensors` (no copy)."""
    for name, tensor in tensors:
        *path, leaf = name.split(".")
        module = traced
        for part in path:
            module = getattr(module, part)
        module._c.setattr(leaf, tensor)
    return traced


def _architecture_key(chain: Any, device: str) -> str:
    """What a trace depends on besides tensor values: module structure and settings, the
    transformer's config, every tensor's name, shape and dtype, and the device."""
    first = chain.model[0]
    inner = getattr(first, "auto_model", None) or getattr(first, "model", None)
    config = getattr(inner, "config", None)
    settings = {k: v for k, v in (config.to_dict() if config is not None else {}).items()
                if k not in ("_name_or_path", "transformers_version")}  # fmt: skip
    shapes = [(name, tuple(t.shape), str(t.dtype)) for name, t in _named_tensors(chain)]
    packed = [name for name, _ in _script_objects(chain)]  # their shapes show in repr(chain.model)
    return json.dumps(
        [repr(chain.model), settings, shapes, packed, list(chain.names), repr(chain.constants), device],
        sort_keys=True,
        default=repr,
    )
