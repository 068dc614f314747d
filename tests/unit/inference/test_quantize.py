"""The worker's int8 quantization is torch's `quantize_dynamic` bit for bit: the same modules in the
same places, the same packed weights, the same outputs, on a real model and on odd layouts."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from modelyard.inference.loaders.base import quantize_linears_int8


def _torch_quantized(module: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensor creation is deprecated upstream
        return torch.ao.quantization.quantize_dynamic(
            module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )


def _assert_same(ours: Any, theirs: Any) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    ours_modules = list(ours.named_modules(remove_duplicate=False))
    theirs_modules = list(theirs.named_modules(remove_duplicate=False))
    assert [(n, type(m)) for n, m in ours_modules] == [(n, type(m)) for n, m in theirs_modules]
    packed = 0
    for (name, a), (_, b) in zip(ours_modules, theirs_modules, strict=True):
        assert len(a._forward_hooks) == len(b._forward_hooks), name
        if not isinstance(a, DynamicLinear):
            continue
        packed += 1
        assert (a.in_features, a.out_features) == (b.in_features, b.out_features), name
        weight_a, bias_a = a._packed_params._weight_bias()
        weight_b, bias_b = b._packed_params._weight_bias()
        assert weight_a.shape == (a.out_features, a.in_features), name
        assert torch.equal(weight_a.int_repr(), weight_b.int_repr()), name
        assert (weight_a.q_scale(), weight_a.q_zero_point()) == (weight_b.q_scale(), weight_b.q_zero_point())
        assert (bias_a is None) == (bias_b is None), name
        if bias_a is not None:
            assert torch.equal(bias_a, bias_b), name
        assert {k for k in vars(a) if not k.startswith("_")} == {k for k in vars(b) if not k.startswith("_")}
    assert packed > 0


def test_a_sentence_transformer_quantizes_exactly_as_torch_does(tiny_st: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_st), device="cpu", local_files_only=True).eval()
    texts = ["short", "a somewhat longer sentence that pads the batch", "the third one"]
    ours, theirs = quantize_linears_int8(copy.deepcopy(model)), _torch_quantized(copy.deepcopy(model))
    _assert_same(ours, theirs)
    with torch.inference_mode():
        assert (ours.encode(texts) == theirs.encode(texts)).all()
        assert not (ours.encode(texts) == model.encode(texts)).all()  # really quantized


class _Odd(torch.nn.Module):
    """Nested Linears with and without bias, attention (whose output projection torch leaves float),
    a convolution, a Linear used twice: what quantization must leave or swap as torch does."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(8, 16)
        self.block = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(16, 8, bias=False))
        self.attention = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv = torch.nn.Conv1d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.first(x))
        x = x + self.attention(x, x, x, need_weights=False)[0]
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize("odd", ["", "hook", "shared", "qconfig"])
def test_odd_layouts_quantize_exactly_as_torch_does(odd: str) -> None:
    torch.manual_seed(0)
    model = _Odd().eval()
    if odd == "hook":  # torch keeps a Linear's hooks on its quantized replacement
        model.first.register_forward_hook(lambda module, args, out: out * 2)
    elif odd == "shared":  # one layer under two names
        model.block.append(model.first)
        model.block.append(torch.nn.Linear(16, 8))
    elif odd == "qconfig":  # a module's own qconfig wins over quantize_dynamic's
        object.__setattr__(model.block, "qconfig", None)
    x = torch.randn(3, 5, 8)
    with torch.inference_mode():
        ours, theirs = quantize_linears_int8(copy.deepcopy(model)), _torch_quantized(copy.deepcopy(model))
        _assert_same(ours, theirs)
        assert torch.equal(ours(x), theirs(x))
        assert not torch.equal(ours(x), model(x))
