"""Providers whose time the benchmark measures, so it can report it apart.

Each adds the wall time spent inside ``embed`` to a process-wide counter,
:data:`PROVIDER_SECONDS`, that the timed scenarios subtract or report, and
counts its calls in :data:`PROVIDER_CALLS`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.corpus import DIMENSIONS, IDENTITY, row_of, row_vector, text_vector
from django_embeddings.providers import BaseProvider
from django_embeddings.providers.static import StaticModelProvider
from django_embeddings.typing import InputType, Matrix

PROVIDER_SECONDS = [0.0]
PROVIDER_CALLS = [0]
# Query texts the running scenario chose, with the vector each stands for (near the row
# its words come from): the corpus provider embeds them so.
QUERY_VECTORS: dict[str, Matrix] = {}


class BenchProvider(BaseProvider):
    """Deterministic 384-dimensional vectors from a hash of the text (a few µs each)."""

    dimensions = DIMENSIONS
    identity = IDENTITY

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        started = time.perf_counter()
        try:
            return np.stack([text_vector(text) for text in texts]).astype(np.float32)
        finally:
            PROVIDER_SECONDS[0] += time.perf_counter() - started


class CorpusProvider(BaseProvider):
    """The seeded corpus: ``"row 17"`` (or ``"row 17 ..."``) embeds as corpus row 17, a
    text of :data:`QUERY_VECTORS` as its vector, any other text as a hash.

    A lookup in a chunk generated once per process (a few µs a row), so that the
    end-to-end benchmark's builds and saves cost next to nothing in the provider.
    """

    dimensions = DIMENSIONS
    identity = IDENTITY

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        started = time.perf_counter()
        PROVIDER_CALLS[0] += 1
        try:
            out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
            for position, text in enumerate(texts):
                chosen = QUERY_VECTORS.get(text)
                if chosen is not None:
                    out[position] = chosen
                    continue
                row = row_of(text)
                out[position] = text_vector(text) if row is None else row_vector(row)
            return out
        finally:
            PROVIDER_SECONDS[0] += time.perf_counter() - started


class TimedStaticModelProvider(StaticModelProvider):
    """The built-in static model, timed."""

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        started = time.perf_counter()
        try:
            return super().embed(texts, input_type)
        finally:
            PROVIDER_SECONDS[0] += time.perf_counter() - started
