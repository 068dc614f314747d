"""Makes `import torchvision` work on CPU torch; imported before any open_clip or image code.

The only torchvision wheel for this torch is a CUDA build whose compiled ops fail to register
on CPU torch; its Python code then asks for `torchvision::nms` and raises. Defining the missing
operator schemas first lets the import succeed (those ops are never called by our loaders).
"""

from __future__ import annotations

import threading

import torch

_lock = threading.Lock()
_done = False
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None


def ensure_torchvision_importable() -> None:
    """Define the missing schemas once per process; safe to call from any thread."""
    global _done, _library
    with _lock:
        if _done:
            return
        missing = {}
        for name, schema in _SCHEMAS.items():
            try:
                torch._C._dispatch_has_kernel_for_dispatch_key(f"torchvision::{name}", "CPU")
            except RuntimeError:
                missing[name] = schema
        if missing:
            _library = torch.library.Library("torchvision", "FRAGMENT")
            for schema in missing.values():
                _library.define(schema)
        _done = True


ensure_torchvision_importable()
