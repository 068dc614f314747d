"""Tiny sentence-transformers with named prompts, E5-style, for the prompt tests of every layer."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
# Words of the tiny vocabulary no prompt test embeds; they make room for the prompts' words.
_SPARE_WORDS = ("photo", "picture", "canary", "route")


def with_prompts(
    source: Path,
    target: Path,
    prompts: dict[str, str] = E5_PROMPTS,
    *,
    default: str | None = None,
    include_prompt: bool = True,
) -> Path:
    """A copy of the tiny sentence-transformer at `source` whose config defines `prompts` (and
    `default_prompt_name`), as E5's `config_sentence_transformers.json` does. The tiny vocabulary
    lacks the prompts' words, so every prompt would read as [UNK] tokens alike: spare words of it
    become those words (same ids, same size). `include_prompt=False`: its pooling leaves prompt
    tokens out, as INSTRUCTOR's does."""
    shutil.copytree(source, target)
    config_path = target / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    config["prompts"] = prompts
    config["default_prompt_name"] = default
    config_path.write_text(json.dumps(config, indent=2))
    tokenizer_path = target / "tokenizer.json"
    tokenizer = json.loads(tokenizer_path.read_text())
    vocab = tokenizer["model"]["vocab"]
    words = sorted({w for text in prompts.values() for w in re.findall(r"[a-z]+", text.lower())} - set(vocab))
    if len(words) > len(_SPARE_WORDS):
        raise ValueError(
            f"prompts need {len(words)} new words; the tiny vocabulary spares {len(_SPARE_WORDS)}"
        )
    for word, spare in zip(words, _SPARE_WORDS, strict=False):
        vocab[word] = vocab.pop(spare)
    tokenizer_path.write_text(json.dumps(tokenizer))
    if not include_prompt:
        pooling_path = target / "1_Pooling" / "config.json"
        pooling = json.loads(pooling_path.read_text())
        pooling["include_prompt"] = False
        pooling_path.write_text(json.dumps(pooling, indent=4))
    return target
