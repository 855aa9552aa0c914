"""Serializer fields for the scores a search annotates its hits with."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

SIMILARITY = "similarity"


class ScoreField(serializers.FloatField):
    """A hit's score, read-only; ``null`` for a row no search returned.

    ``of`` names the score: ``"score"`` (a hybrid search's fused score, the default),
    ``"similarity"`` (cosine) or ``"keyword_score"`` (BM25). It is read from that
    attribute whatever the field is named; pass ``source=`` to read another attribute.
    """

    default_score = "score"

    def __init__(self, of: str | None = None, **kwargs: Any) -> None:
        kwargs["read_only"] = True
        kwargs.setdefault("allow_null", True)  # a row serialized outside a search
        self.score = of or self.default_score
        self._default_source = "source" not in kwargs
        super().__init__(**kwargs)

    def bind(self, field_name: str, parent: Any) -> None:
        super().bind(field_name, parent)
        if self._default_source:
            # Set after bind(), which would call source="<the score>" on a field of
            # that name redundant.
            self.source = self.score
            self.source_attrs = [self.score]


class SimilarityField(ScoreField):
    """A hit's cosine similarity (``ScoreField(of="similarity")``); ``score =
    SimilarityField()`` works too."""

    default_score = SIMILARITY
