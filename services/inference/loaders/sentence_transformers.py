"""`sentence-transformers` loader: text -> L2-normalized (when the model says so) embeddings.

Forward passes run a TorchScript trace of the model's whole module chain (transformer, pooling,
normalization), so a pass is tokenization plus one C++ call: no Python per layer, and two passes on
two threads barely contend for the GIL. The trace is one flat graph over the chain's tensors, held
as attributes of a single module (`_flat_module_class`). Each trace is checked against
`SentenceTransformer.encode` on batches of other shapes than it was traced with; a model that cannot
be traced, or whose trace disagrees, is served through `encode` (event `model.trace_skipped` says why).

Named prompts (`model.prompts`, E5's {"query": "query: ", "passage": "passage: "}) are chosen per
request with the `prompt_name` parameter, else the model's `default_prompt_name` applies, as in
`encode`. `prepare` puts the prompt before each text, which is all `encode` does with it unless a
pooling leaves prompt tokens out (`include_prompt` false): such a model is served through `encode`,
handed each prompt apart. The trace and the onnxruntime session are also checked on prompted
batches against `encode(prompt_name=...)`, so requests with different prompts share passes.

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
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from modelyard.common.log import event
from modelyard.common.modelspec import PROMPT_NAME, RequestParameter, Signature, TensorSpec
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
from modelyard.inference.loaders.shared_processors import sharing_processors

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
# The traces this process checked against `encode` and found equal: (architecture key, checkpoint
# hash, precision, sequence length, prompts). The same template bound to the same hash-checked
# weights computes the same function, so a version loaded again (a rollback, a swap back) skips the
# check's forward passes, which under load were most of the time a swap waited for its trace.
_VERIFIED: set[tuple[str, ...]] = set()


# fp32 onnxruntime against `encode` (MiniLM measured 2e-7).
_ONNX_FP32_ATOL = 1e-4


def _norms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


# The token estimate of `item_lengths`: [CLS] and [SEP], and characters per token.
_SPECIAL_TOKENS = 2
_CHARS_PER_TOKEN = 4


class PromptedText(str):
    """A text with its prompt before it, as a pass tokenizes it, that remembers both parts: the
    `encode` path hands the prompt to `encode` apart (a pooling that leaves prompt tokens out
    needs to know where they end)."""

    prompt: str
    text: str

    def __new__(cls, prompt: str, text: str) -> PromptedText:
        prompted = super().__new__(cls, prompt + text)
        prompted.prompt = prompt
        prompted.text = text
        return prompted


@register_loader
class SentenceTransformerRuntime(ModelRuntime):
    loader_name: ClassVar[str] = "sentence-transformers"
    model_type: ClassVar[str] = "text_embedding"
    declared_inputs: ClassVar[tuple[TensorSpec, ...]] = (TensorSpec("text", "BYTES", (-1,)),)
    declared_outputs: ClassVar[tuple[TensorSpec, ...]] = (TensorSpec("embedding", "FP32", (-1, -1)),)

    traced: Any = None  # the TorchScript chain, or None to serve through `encode`
    onnx: Any = None  # the onnxruntime session (`onnx_engine.OnnxChain`) when that engine serves
    _feature_names: tuple[str, ...] = ()
    # int8 left to onnxruntime's quantizer: the torch model stays fp32 until the engine is known.
    _quantize_later = False
    # The model's prompts with a text (sentence-transformers adds empty `query` and `document`
    # ones to every model), by name, and the one a request without `prompt_name` gets ("": none).
    _prompts: dict[str, str] = {}
    _default_prompt = ""

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
        with sharing_processors(self.path, str(self.spec.config.max_sequence_length)):
            model = SentenceTransformer(
                str(self.path),
                device=self.device,
                local_files_only=True,
                trust_remote_code=trust,
            )
        if self.spec.config.max_sequence_length > 0:
            model.max_seq_length = self.spec.config.max_sequence_length
        model.eval()
        config = self.spec.config
        self._quantize_later = config.engine == "onnxruntime" and config.quantization == "int8-dynamic"
        with torch.inference_mode():
            self.model = model if self._quantize_later else apply_precision(model, self.spec, self.device)
        self.dim = int(self.model.get_embedding_dimension() or 0)
        self._prompts = {name: text for name, text in sorted((model.prompts or {}).items()) if text}
        default = model.default_prompt_name or ""
        self._default_prompt = default if default in self._prompts else ""
        if self._prompts:
            event(log, "model.prompts", model=self.spec.model_id, version=self.spec.version,
                  prompts=",".join(self._prompts), default=self._default_prompt)  # fmt: skip

    def optimize(self) -> None:
        if self.spec.config.engine == "onnxruntime":
            self.onnx = self._export_onnx()
            if self.onnx is not None:
                self.engine = "onnxruntime"
                return
            if self._quantize_later and self.model is not None:  # torch quantizes after all
                import torch

                with torch.inference_mode():
                    self.model = apply_precision(self.model, self.spec, self.device)
            self._quantize_later = False
        self.traced = self._trace()

    def _export_onnx(self) -> Any:
        """The onnxruntime session of this version, checked against `encode`; None (and why, in
        event `model.engine_fallback`) when it cannot serve: then torch does."""
        model = self.model
        if model is None:
            return None
        if not self.device.startswith("cpu"):
            return self._fallback(f"onnxruntime here runs on CPU only, and the version is on {self.device}")
        if blocker := self._prompts_need_encode():
            return self._fallback(blocker)
        try:
            from modelyard.inference.loaders import onnx_engine

            chain, features = _chain_of(model)
            names = chain.names
            session = onnx_engine.export(
                chain, features, names, quantize=self._quantize_later, threads=self.pass_threads
            )
            # fp32 `encode`: int8 is onnxruntime's, not yet torch's.
            for what, texts, expected in self._checks(_TRACE_SAMPLES):
                got = session.run(model.preprocess(texts))
                if got.shape != expected.shape:
                    return self._fallback(f"onnxruntime gave shape {got.shape}, encode {expected.shape}")
                if session.quantized:
                    worst = float(np.min(np.sum(got * expected, axis=1) / _norms(got, expected)))
                    if worst < onnx_engine.INT8_MIN_COSINE:
                        return self._fallback(
                            f"int8 onnxruntime rows reach cosine {worst:.3f} to encode on {what}, below "
                            f"{onnx_engine.INT8_MIN_COSINE}"
                        )
                elif not np.allclose(got, expected, rtol=0, atol=_ONNX_FP32_ATOL):
                    gap = float(np.max(np.abs(got - expected)))
                    return self._fallback(
                        f"onnxruntime differs from encode by {gap:.2e} (> {_ONNX_FP32_ATOL}) on {what}"
                    )
        except Exception as exc:
            return self._fallback(f"export failed: {type(exc).__name__}: {exc}")
        self._feature_names = names
        event(log, "model.engine", model=self.spec.model_id, version=self.spec.version, engine="onnxruntime",
              quantized=session.quantized)  # fmt: skip
        return session

    def _fallback(self, reason: str) -> None:
        event(log, "model.engine_fallback", level=logging.WARNING, model=self.spec.model_id,
              version=self.spec.version, engine="torch", reason=reason)  # fmt: skip
        self.engine_note = reason

    def _trace(self) -> Any:
        import torch

        model = self.model
        if model is None:  # unloaded meanwhile
            return None
        if blocker := self._prompts_need_encode():
            return self._skip_trace(blocker)
        try:  # whatever goes wrong here, the version still serves, through `encode`
            chain, features = _chain_of(model)
            names = chain.names
            tensors = _slots(_named_tensors(chain) + _script_objects(chain))
            key = _architecture_key(chain, self.device)
            with _TEMPLATES_LOCK:
                template = _TEMPLATES.get(key)
                if template is None:
                    with torch.inference_mode(), warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # TracerWarnings on shape checks; verified below
                        traced = torch.jit.trace(
                            _flat_module_class()(chain, tensors),
                            tuple(features[k].to(self.device) for k in names),
                            check_trace=False,
                            strict=False,
                        )
                    # The template is copied while the trace holds stand-ins, so the copy never
                    # duplicates the weights (a 90 MB memcpy for MiniLM fp32, 0.06 s idle).
                    _bind(traced, _placeholders(tensors))
                    _TEMPLATES[key] = copy.deepcopy(traced)
                    _bind(traced, tensors)
                else:
                    traced = _bind(copy.deepcopy(template), tensors)
            verified = self._verified_key(key)
            checked = verified not in _VERIFIED
            if checked:
                tolerance = 1e-3 if self.spec.config.dtype == "float16" else 1e-5
                for what, texts, expected in self._checks(_TRACE_SAMPLES[1:]):
                    got = self._run_traced(traced, names, texts)
                    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=tolerance):
                        return self._skip_trace(f"the trace disagrees with encode on {what}")
                _VERIFIED.add(verified)
        except Exception as exc:
            return self._skip_trace(f"tracing failed: {type(exc).__name__}: {exc}")
        self._feature_names = names
        event(log, "model.traced", model=self.spec.model_id, version=self.spec.version,
              reused=template is not None, checked=checked)  # fmt: skip
        return traced

    def _verified_key(self, architecture: str) -> tuple[str, ...]:
        config = self.spec.config
        return (
            architecture,
            self.spec.checkpoint_hash,
            config.dtype,
            config.quantization,
            str(self.model.max_seq_length),
            json.dumps(self._prompts, sort_keys=True),
        )

    def _skip_trace(self, reason: str) -> None:
        event(log, "model.trace_skipped", level=logging.WARNING, model=self.spec.model_id,
              version=self.spec.version, reason=reason)  # fmt: skip

    def _prompts_need_encode(self) -> str:
        """Why only `encode` serves this model's prompts exactly, or "" when a prompt before the
        text is all they are."""
        model = self.model
        if self._prompts and any(getattr(m, "include_prompt", True) is False for m in model.modules()):
            return (
                "the model's pooling leaves prompt tokens out (include_prompt false), which only "
                "`encode` does"
            )
        return ""

    def _checks(self, batches: list[list[str]]) -> list[tuple[str, list[str], np.ndarray]]:
        """What a faster path must reproduce: (what, the texts it is given, `encode`'s vectors),
        for `batches` and, per prompt, a batch with that prompt before each text."""
        checks = [(f"a batch of {len(batch)} texts", batch, self._encode(batch)) for batch in batches]
        for name, prompt in self._prompts.items():
            batch = _TRACE_SAMPLES[-1]
            checks.append(
                (
                    f"a batch with prompt {name!r}",
                    [prompt + text for text in batch],
                    self._encode(batch, name=name),
                )
            )
        return checks

    def signature(self) -> Signature:
        parameters: tuple[RequestParameter, ...] = ()
        if self._prompts:
            parameters = (RequestParameter(PROMPT_NAME, tuple(self._prompts.items()), self._default_prompt),)
        return Signature(
            inputs=(TensorSpec("text", "BYTES", (-1,)),),
            outputs=(TensorSpec("embedding", "FP32", (-1, self.dim)),),
            embedding_dim=self.dim,
            parameters=parameters,
        )

    def prepare(self, input_name: str, items: list[bytes]) -> list[Any]:
        return self.prepare_request(input_name, items, {})

    def prepare_request(
        self, input_name: str, items: list[bytes], parameters: Mapping[str, str]
    ) -> list[Any]:
        """UTF-8 texts, each after the prompt the request names (`prompt_name`), else after the
        model's default prompt, as `encode` does."""
        if input_name != "text":
            raise BadInput(f"input {input_name!r} is not accepted; this model takes `text` BYTES [N]")
        texts = decode_texts(items, input_name)
        name = parameters.get(PROMPT_NAME) or self._default_prompt
        if not name:
            return texts
        prompt = self._prompts.get(name)
        if prompt is None:  # the data plane refuses it first, from the signature
            defined = ", ".join(self._prompts) or "none"
            raise BadInput(f"{PROMPT_NAME} {name!r} is not a prompt of this model; it defines {defined}")
        return [PromptedText(prompt, text) for text in texts]

    def prepare_is_cheap(self, input_name: str) -> bool:
        return input_name == "text"

    def item_lengths(self, input_name: str, items: list[Any]) -> list[int] | None:
        # Estimated tokens: a character count costs nothing on the event loop, where tokenizing
        # took 78 us per text (a pass tokenizes anyway). English WordPiece averages about 4.2
        # characters per token (MiniLM's on the benchmark's texts); cut where the model truncates.
        model = self.model
        limit = int(getattr(model, "max_seq_length", 0) or 0) or 1 << 20
        return [min(limit, _SPECIAL_TOKENS + -(-len(text) // _CHARS_PER_TOKEN)) for text in items]

    def predict(self, input_name: str, items: list[Any]) -> Outputs:
        session = self.onnx
        if session is not None:
            return {"embedding": session.run(self.model.preprocess(items))}
        traced = self.traced  # read once: `optimize` may switch it on another thread
        if traced is None:
            return {"embedding": self._encode_prepared(items)}
        return {"embedding": self._run_traced(traced, self._feature_names, items)}

    def _encode_prepared(self, items: list[str]) -> np.ndarray:
        """`encode` of prepared texts: one call per prompt among them, each given its prompt."""
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(item.prompt if isinstance(item, PromptedText) else "", []).append(index)
        texts = [item.text if isinstance(item, PromptedText) else item for item in items]
        if len(groups) == 1:
            return self._encode(texts, prompt=next(iter(groups)))
        parts = [
            (indices, self._encode([texts[i] for i in indices], prompt=p)) for p, indices in groups.items()
        ]
        rows = np.empty((len(items), parts[0][1].shape[1]), dtype=np.float32)
        for indices, vectors in parts:
            rows[indices] = vectors
        return rows

    def _encode(self, items: list[str], *, prompt: str = "", name: str | None = None) -> np.ndarray:
        """`encode` with prompt `name`, else with `prompt` before each text ("" also overrides the
        model's default prompt: prepared texts already carry it)."""
        import torch

        with torch.inference_mode():
            vectors = self.model.encode(
                items,
                batch_size=max(1, len(items)),
                convert_to_numpy=True,
                show_progress_bar=False,
                **({"prompt_name": name} if name is not None else {"prompt": prompt}),
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
        self.onnx = None


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


def _chain_of(model: Any) -> tuple[Any, dict[str, Any]]:
    """The model's module chain as a function of its tokenizer's tensors, and the tokenizer's
    features of the first trace sample (tensors by name, the rest kept as the chain's constants)."""
    import torch

    features = model.preprocess(_TRACE_SAMPLES[0])
    names = tuple(k for k, v in features.items() if isinstance(v, torch.Tensor))
    constants = {k: v for k, v in features.items() if not isinstance(v, torch.Tensor)}
    return _module_chain_class()(model, names, constants), features


@functools.cache
def _flat_module_class() -> type:
    import torch

    class FlatChain(torch.nn.Module):
        """What `torch.jit.trace` is given: one module whose attributes are the chain's tensors and
        packed weights (`_slots` names), calling the chain it hides from the tracer. The tracer
        finds each tensor an op uses among these attributes, so the trace reads them from there and
        binding new ones needs no module tree. Tracing the chain itself turned each of its
        submodules into a script module: for int8 MiniLM, 0.40 s of a 0.45 s trace, GIL held."""

        def __init__(self, chain: Any, slots: list[tuple[str, Any]]) -> None:
            super().__init__()
            object.__setattr__(self, "_chain", chain)  # not a submodule: the tracer never walks it
            for slot, value in slots:
                if isinstance(value, torch.Tensor):
                    self._buffers[slot] = value  # the parameter itself, so the tracer knows it
                else:
                    object.__setattr__(self, slot, value)

        def forward(self, *tensors: Any) -> Any:
            chain: Any = self.__dict__["_chain"]
            return chain(*tensors)

    return FlatChain


def _slots(values: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The flat attribute names a trace holds `values` under: by position, which the architecture
    key fixes (every tensor's name, shape and dtype, and every packed weight's name, in order)."""
    return [(f"w{index}_{name.replace('.', '_')}", value) for index, (name, value) in enumerate(values)]


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
    """Point the traced module's tensors and packed weights at `tensors` (`_slots`; no copy)."""
    for slot, tensor in tensors:
        traced._c.setattr(slot, tensor)
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
