from __future__ import annotations

from django.db import models

from django_embeddings import EmbeddingField, EmbeddingManager


class Doc(models.Model):
    text = models.TextField()
    embedding = EmbeddingField(source="text")

    objects = EmbeddingManager()
