"""A sentence-transformers loader with faults set in its artifact (`faults.json`): every forward pass
after warm-up sleeps `delay_s`, and every `fail_every`-th one raises. Registered as
`faulty-sentence-transformers` by importing this module (tests/fault_worker.py does, in a real
worker process): the bad versions of the rollout tests, with MiniLM's weights and signature."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, ClassVar

from modelyard.inference.loaders import register_loader
from modelyard.inference.loaders.base import Outputs
from modelyard.inference.loaders.sentence_transformers import SentenceTransformerRuntime

FAULTS_FILE = "faults.json"


@register_loader
class FaultyRuntime(SentenceTransformerRuntime):
    loader_name: ClassVar[str] = "faulty-sentence-transformers"

    def load(self) -> None:
        super().load()
        faults: dict[str, Any] = json.loads((self.path / FAULTS_FILE).read_text())
        self.delay_s = float(faults.get("delay_s", 0.0))
        self.fail_every = int(faults.get("fail_every", 0))
        self.passes = 0
        self.armed = False  # warm-up and the load's own checks run clean
        self.count_lock = threading.Lock()

    def warmup(self) -> None:
        super().warmup()
        self.armed = True

    def predict(self, input_name: str, items: list[Any]) -> Outputs:
        if self.armed:
            with self.count_lock:
                self.passes += 1
                failing = self.fail_every > 0 and self.passes % self.fail_every == 0
            if self.delay_s:
                time.sleep(self.delay_s)
            if failing:
                raise RuntimeError(
                    f"injected fault: pass {self.passes} of a version failing every {self.fail_every}"
                )
        return super().predict(input_name, items)
