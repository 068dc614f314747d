"""The worker's environment defaults take effect: in a fresh process, applied before torch is
imported, MKL keeps none of the buffers of the matrix products it ran; and an operator's value wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

# Products of the shapes a transformer's pass multiplies (tokens x 768 by 768 x 3072), then what
# the heap still holds in large blocks, and the MKL setting the process ran with.
SCRIPT = """
import ctypes, gc, json, os, sys
if sys.argv[1] == "apply":
    from modelyard.inference.process_env import apply_defaults
    apply_defaults()
import torch

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
torch.set_num_threads(1)
for tokens in (64, 512, 1024, 2048):
    torch.nn.functional.linear(torch.randn(tokens, 768), torch.randn(3072, 768))
gc.collect()
print(json.dumps({"large_blocks": mallinfo2().hblkhd, "mkl": os.environ.get("MKL_DISABLE_FAST_MM")}))
"""


def _run(mode: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MKL_DISABLE_FAST_MM", "TOKENIZERS_PARALLELISM")}


def test_defaults_applied_before_torch_leave_no_mkl_buffers() -> None:
    plain = _run("plain", _clean_env())
    applied = _run("apply", _clean_env())
    assert plain["mkl"] is None and applied["mkl"] == "1"
    # MKL's memory manager keeps about 17 MiB of large blocks after these products; without it the
    # heap holds only what the interpreter and torch keep anyway.
    assert int(plain["large_blocks"]) - int(applied["large_blocks"]) > 8 * 2**20, (plain, applied)


def test_an_operators_value_wins() -> None:
    env = {**_clean_env(), "MKL_DISABLE_FAST_MM": "0"}
    assert _run("apply", env)["mkl"] == "0"
