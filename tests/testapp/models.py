from __future__ import annotations

import uuid

from django.db import models

from django_embeddings import EmbeddingField, EmbeddingManager


class Article(models.Model):
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    published = models.BooleanField(default=True)
    embedding = EmbeddingField(source="body")

    objects = EmbeddingManager()

    def __str__(self) -> str:
        return self.title


class ArticleProxy(Article):
    class Meta:
        proxy = True


class Doc(models.Model):
    """Shares its name with otherapp.Doc: their stores must never collide."""

    text = models.TextField()
    embedding = EmbeddingField(source="text")

    objects = EmbeddingManager()


class UUIDDoc(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    text = models.TextField()
    embedding = EmbeddingField(source="text")

    objects = EmbeddingManager()


class SlugDoc(models.Model):
    """String keys with ``/``, ``..`` and unicode must never become paths."""

    slug = models.CharField(primary_key=True, max_length=200)
    text = models.TextField()
    embedding = EmbeddingField(source="text")

    objects = EmbeddingManager()


class Product(models.Model):
    """Two independent embedding fields, one with a computed source."""

    name = models.CharField(max_length=200)
    description = models.TextField()
    name_embedding = EmbeddingField(source="name", provider="small")
    full_embedding = EmbeddingField(source="full_text")

    objects = EmbeddingManager()

    def full_text(self) -> str:
        return f"{self.name}\n{self.description}"


def note_text(note: Note) -> str:
    return f"{note.heading}: {note.content}"


class Note(models.Model):
    heading = models.CharField(max_length=100)
    content = models.TextField()
    embedding = EmbeddingField(source=note_text, auto_embed=True, cache=False)

    objects = EmbeddingManager()


class ManualDoc(models.Model):
    text = models.TextField()
    embedding = EmbeddingField(source="text", auto_embed=False)

    objects = EmbeddingManager()
