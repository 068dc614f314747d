"""`python tests/fault_worker.py ARGS`: `python -m modelyard.inference ARGS` with the test loaders of
`fault_loader` registered (a real worker process that can serve deliberately bad versions)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fault_loader  # noqa: F401  (registers faulty-sentence-transformers)

from modelyard.inference.__main__ import main

if __name__ == "__main__":
    main()
