"""The raw baseline of the worker benchmark: `SentenceTransformer.encode` in a process of its own.

It imports no gRPC, so the benchmark's client threads cannot slow it, and it waits on stdin between
measurements, so it uses no CPU while the worker is measured.
Commands, one per line, each answered with one JSON line: `best`, `throughput SIZE SECONDS`,
`best_whole`, `whole SIZE SECONDS` (the whole list per call, length-sorted by `encode`), `single N`.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import modelyard.inference.torchvision_compat  # noqa: F401  (before sentence-transformers)

SIZES = (1, 8, 16, 32, 64)


class RawModel:
    def __init__(self, model_dir: str, sentences: list[str]) -> None:
        from sentence_transformers import SentenceTransformer

        self.sentences = sentences
        self.model = SentenceTransformer(model_dir, device="cpu")
        self.model.encode(sentences[:8], show_progress_bar=False)

    def throughput(self, size: int, seconds: float) -> float:
        """Sentences/s encoding batches of `size`."""
        import torch

        batches = [self.sentences[i : i + size] for i in range(0, len(self.sentences), size)]
        with torch.inference_mode():
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                for batch in batches:
                    self.model.encode(batch, batch_size=size, show_progress_bar=False)
                    count += len(batch)
        return count / (time.perf_counter() - started)

    def whole(self, size: int, seconds: float) -> float:
        """Sentences/s encoding the whole list at once with `batch_size=size`: `encode` sorts it by
        length first, so each batch pads only to its own longest sentence (its best case)."""
        import torch

        with torch.inference_mode():
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                self.model.encode(self.sentences, batch_size=size, show_progress_bar=False)
                count += len(self.sentences)
        return count / (time.perf_counter() - started)

    def best_whole(self, seconds: float) -> tuple[float, int]:
        rates = {size: self.whole(size, seconds) for size in SIZES[1:]}
        size = max(rates, key=lambda s: rates[s])
        return rates[size], size

    def best(self, seconds: float) -> tuple[float, int]:
        rates = {size: self.throughput(size, seconds) for size in SIZES}
        size = max(rates, key=lambda s: rates[s])
        return rates[size], size

    def single(self, n: int) -> list[float]:
        import torch

        latencies = []
        with torch.inference_mode():
            for i in range(n):
                started = time.perf_counter()
                self.model.encode([self.sentences[i % len(self.sentences)]], show_progress_bar=False)
                latencies.append(time.perf_counter() - started)
        return latencies


def main() -> None:
    model = RawModel(sys.argv[1], json.loads(sys.argv[2]))
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "best":
            answer: object = model.best(3.0)
        elif command == "throughput":
            answer = model.throughput(int(args[0]), float(args[1]))
        elif command == "best_whole":
            answer = model.best_whole(3.0)
        elif command == "whole":
            answer = model.whole(int(args[0]), float(args[1]))
        elif command == "single":
            answer = model.single(int(args[0]))
        else:
            answer = {"error": f"unknown command {command!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
