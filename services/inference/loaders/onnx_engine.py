"""The `onnxruntime` engine of sentence-transformers versions: the module chain (transformer,
pooling, normalization) exported to ONNX at load, int8 by onnxruntime's dynamic quantization when
the version asks for it, run by one onnxruntime session that every lane shares (`run` is
thread-safe).

The export is made in memory from the loaded artifact, so the version's checkpoint hash and
signature are those of its torch engine; nothing is written beside the artifact. The caller checks
the session against `encode` before it serves (`sentence_transformers.SentenceTransformerRuntime`).
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# onnx 1.19 reads opset 17 everywhere onnxruntime 1.23 runs it; newer opsets add nothing used here.
OPSET = 17
# int8 dynamic quantization changes the vectors: each row's cosine to fp32 `encode` must reach
# this on the check batches (MiniLM: 0.926 at worst over 32 texts of 5-120 words, 0.96 mean).
INT8_MIN_COSINE = 0.9


class OnnxChain:
    """One onnxruntime session of a module chain; `run` takes the tokenizer's tensors by name."""

    def __init__(self, session: Any, names: tuple[str, ...], quantized: bool) -> None:
        self.session = session
        self.names = names
        self.quantized = quantized

    def run(self, features: dict[str, Any]) -> np.ndarray:
        feeds = {name: features[name].cpu().numpy() for name in self.names}
        (vectors,) = self.session.run(None, feeds)
        return np.asarray(vectors, dtype=np.float32)


def export(
    chain: Any, features: dict[str, Any], names: tuple[str, ...], *, quantize: bool, threads: int
) -> OnnxChain:
    """Export `chain` (a torch module of the tokenizer tensors `names`) and open a session of it.

    `threads`: onnxruntime's intra-op threads, those of one serving lane (the session cannot tell
    which lane calls it, so the solo lane runs it with the same count)."""
    import onnxruntime
    import torch

    buffer = io.BytesIO()
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on shape checks; the caller verifies
        torch.onnx.export(
            chain,
            tuple(features[name] for name in names),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to files and buffers
            input_names=list(names),
            output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    model = buffer.getvalue()
    if quantize:
        model = _quantized(model)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings name graph nodes, not our problems
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return OnnxChain(session, names, quantized=quantize)


def _quantized(model: bytes) -> bytes:
    """int8 weights of MatMul/Gemm, activations quantized per pass (onnxruntime's dynamic mode)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="modelyard-onnx-") as work:
        source, target = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
        source.write_bytes(model)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        return target.read_bytes()
