"""Environment defaults a worker process gives itself before anything imports torch: the libraries
read them once, when they load, so setting them later does nothing. An operator's own values win.

- `TOKENIZERS_PARALLELISM=false`: the Rust tokenizers would start a thread pool of their own beside
  the serving lanes' threads, which already use every core.
- `MKL_DISABLE_FAST_MM=1`: MKL's memory manager keeps the buffers of the matrix products it ran for
  the life of the process. After long passes (a benchmark of mpnet over 612 docstrings, in-process,
  two single-threaded lanes) it held 27 MiB of large blocks and about 22 MiB of small ones, none of
  which an unload could give back; without it the round trip MiniLM -> mpnet -> MiniLM kept +5.5 %
  RSS instead of +7.8 %, at the same throughput (two lanes, 731-789 against 749-778 sentences/s).
"""

from __future__ import annotations

import os

DEFAULTS = {"TOKENIZERS_PARALLELISM": "false", "MKL_DISABLE_FAST_MM": "1"}


def apply_defaults() -> None:
    """Set each default the environment does not set already (call before importing torch)."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
