"""``SimilarityField``: the ``similarity`` a search annotates its hits with."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

SIMILARITY = "similarity"


class SimilarityField(serializers.FloatField):
    """A hit's cosine similarity, read-only; ``null`` for a row no search returned.

    The value is read from the ``similarity`` attribute whatever the field is named
    (``score = SimilarityField()`` works); pass ``source=`` to read another attribute.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs["read_only"] = True
        kwargs.setdefault("allow_null", True)  # a row serialized outside a search
        self._default_source = "source" not in kwargs
        super().__init__(**kwargs)

    def bind(self, field_name: str, parent: Any) -> None:
        super().bind(field_name, parent)
        if self._default_source:
            # Set after bind(), which would call source="similarity" on a field of
            # that name redundant.
            self.source = SIMILARITY
            self.source_attrs = [SIMILARITY]
