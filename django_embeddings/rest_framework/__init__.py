"""Django REST framework integration: ``pip install django-embedding-field[rest]``.

``SemanticSearchFilter`` ranks a list view's rows by meaning and words
(``?search=...&k=...``); ``ScoreField`` and ``SimilarityField`` serialize each hit's
scores.
"""

from __future__ import annotations

from django_embeddings.rest_framework.fields import ScoreField, SimilarityField
from django_embeddings.rest_framework.filters import SemanticSearchFilter

__all__ = ["ScoreField", "SemanticSearchFilter", "SimilarityField"]
