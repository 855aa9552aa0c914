"""``Doc``: corpora built from deterministic vectors; ``Passage``: texts for the backfill;
``PlainDoc``: the save baseline."""

from __future__ import annotations

from django.db import models

from django_embeddings import EmbeddingField, EmbeddingManager


class Doc(models.Model):
    # bucket = id % 100: ``bucket=0`` selects 1 % of the rows, ``bucket__lt=50`` half.
    bucket = models.PositiveSmallIntegerField(db_index=True)
    text = models.TextField()
    embedding = EmbeddingField(source="text")

    objects = EmbeddingManager()


class PlainDoc(models.Model):
    """``Doc`` without the EmbeddingField: what a save costs the database alone."""

    bucket = models.PositiveSmallIntegerField(db_index=True)
    text = models.TextField()


class Passage(models.Model):
    text = models.TextField()
    embedding = EmbeddingField(source="text", provider="static")

    objects = EmbeddingManager()
