"""``Doc``: corpora built from deterministic vectors; ``Passage``: texts for the backfill;
``PlainDoc``: the save baseline. ``Article``, ``PlainArticle`` and ``UncachedArticle``:
the end-to-end benchmark's (:mod:`bench.endtoend`); ``TextArticle``,
``UnindexedTextArticle`` and ``PlainTextArticle``: its keyword and hybrid search section's."""

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


# The end-to-end benchmark's models (bench.endtoend): each row's text is "row i" and the
# "corpus" provider embeds it as row i of the seeded corpus.


class Article(models.Model):
    # bucket = row % 100: ``bucket=0`` selects 1 % of the rows, ``bucket__lt=10`` 10 %.
    bucket = models.PositiveSmallIntegerField(db_index=True)
    text = models.TextField()
    embedding = EmbeddingField(source="text", provider="corpus")

    objects = EmbeddingManager()


class PlainArticle(models.Model):
    """``Article`` without the EmbeddingField: what the same create costs without it."""

    bucket = models.PositiveSmallIntegerField(db_index=True)
    text = models.TextField()


class UncachedArticle(models.Model):
    """``Article`` whose field keeps no index in the process (``cache=False``)."""

    bucket = models.PositiveSmallIntegerField(db_index=True)
    text = models.TextField()
    embedding = EmbeddingField(source="text", provider="corpus", cache=False)

    objects = EmbeddingManager()


# The keyword and hybrid search section's: each row's text is "row i" and then 100-200
# words (bench.articles); the "corpus" provider still embeds it as row i of the corpus.


class TextArticle(models.Model):
    bucket = models.PositiveSmallIntegerField(db_index=True)
    text = models.TextField()
    embedding = EmbeddingField(source="text", provider="corpus")  # keywords=True, the default

    objects = EmbeddingManager()


class UnindexedTextArticle(models.Model):
    """``TextArticle`` whose field keeps no keyword index: what a save costs without one."""

    bucket = models.PositiveSmallIntegerField(db_index=True)
    text = models.TextField()
    embedding = EmbeddingField(source="text", provider="corpus", keywords=False)

    objects = EmbeddingManager()


class PlainTextArticle(models.Model):
    """``TextArticle`` without the EmbeddingField."""

    bucket = models.PositiveSmallIntegerField(db_index=True)
    text = models.TextField()
