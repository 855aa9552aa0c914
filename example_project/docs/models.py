"""One model: a piece of the Python standard library's documentation."""

from __future__ import annotations

from django.db import models
from django.urls import reverse

from django_embeddings import EmbeddingField, EmbeddingManager

SNIPPET_LENGTH = 240


class Document(models.Model):
    class Kind(models.TextChoices):
        MODULE = "module", "Module"
        CLASS = "class", "Class"
        EXCEPTION = "exception", "Exception"
        FUNCTION = "function", "Function"
        METHOD = "method", "Method"
        TOPIC = "topic", "Language topic"

    kind = models.CharField(max_length=16, choices=Kind.choices, db_index=True)
    name = models.CharField(max_length=200, help_text="Dotted name, or the pydoc topic key.")
    title = models.CharField(max_length=200)
    module = models.CharField(
        max_length=100, blank=True, db_index=True, help_text="Empty for language topics."
    )
    signature = models.TextField(blank=True)
    body = models.TextField()
    # Embeds what `embedding_text` returns whenever a document is saved.
    embedding = EmbeddingField(source="embedding_text")

    objects = EmbeddingManager()

    class Meta:
        ordering = ["kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "name"], name="docs_document_kind_name"),
        ]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("docs:document", args=[self.pk])

    def embedding_text(self) -> str:
        """The title (split at dots, so ``json.dumps`` reads as words), then the text."""
        words = self.title.replace(".", " ").replace("_", " ")
        return f"{words}\n{self.title}{self.signature}\n{self.body}"

    @property
    def snippet(self) -> str:
        """The first paragraph, cut to a few lines."""
        paragraph = self.body.strip().split("\n\n", 1)[0]
        text = " ".join(paragraph.split())
        if len(text) <= SNIPPET_LENGTH:
            return text
        return text[:SNIPPET_LENGTH].rsplit(" ", 1)[0] + "…"
