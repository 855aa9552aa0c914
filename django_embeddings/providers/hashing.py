"""A deterministic, offline provider for tests and examples.

Words and character trigrams are hashed into signed buckets (the "hashing
trick"), so texts that share words get similar vectors without any model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from django_embeddings.providers.base import BaseProvider
from django_embeddings.typing import InputType, Matrix

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingProvider(BaseProvider):
    """Feature-hashing embeddings: fast, deterministic, not semantic."""

    def __init__(self, dimensions: int = 64, **options: Any) -> None:
        super().__init__(**options)
        if not isinstance(dimensions, int) or dimensions < 1:
            raise ValueError(
                f"HashingProvider dimensions should be a positive int, not {dimensions!r}."
            )
        self.dimensions = dimensions
        self.identity = f"hashing-v1-{dimensions}"

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in _features(text):
                digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                sign = 1.0 if value & 1 else -1.0
                out[row, (value >> 1) % self.dimensions] += sign
            if not out[row].any():
                # Empty or symbol-only text still gets a valid (non-zero) vector.
                out[row, 0] = 1.0
        return out


def _features(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    grams = [f"#{w[i : i + 3]}" for w in words for i in range(max(1, len(w) - 2))]
    return words + grams
