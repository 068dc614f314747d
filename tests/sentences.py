"""Varied sentences for load generators: English drawn from a small grammar (one distribution,
thousands of distinct sentences of 4 to 12 words), and random strings of letters and digits (a
shifted distribution for drift)."""

from __future__ import annotations

import random
import string

SUBJECTS = ["the cat", "a small dog", "my neighbour", "the old train", "our team", "a red bird", "the river"]
VERBS = ["sat near", "ran past", "looked at", "waited for", "talked about", "jumped over", "followed"]
OBJECTS = ["the mat", "a quiet park", "the station", "an open window", "the blue house", "the market"]
TAILS = ["", " this morning", " after the rain", " before dinner", " on a sunny day", " again and again"]


def english(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"


def gibberish(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits
    return " ".join("".join(rng.choices(alphabet, k=rng.randint(3, 9))) for _ in range(rng.randint(4, 8)))
