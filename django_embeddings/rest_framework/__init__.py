"""Django REST framework integration: ``pip install django-embedding-field[rest]``.

``SemanticSearchFilter`` ranks a list view's rows by meaning (``?search=...&k=...``);
``SimilarityField`` serializes each hit's cosine similarity.
"""

from __future__ import annotations

from django_embeddings.rest_framework.fields import SimilarityField
from django_embeddings.rest_framework.filters import SemanticSearchFilter

__all__ = ["SemanticSearchFilter", "SimilarityField"]
