"""Tables of the ``database`` store (``DJANGO_EMBEDDINGS_STORE = "database"``).

Created by this app's migrations whichever store is chosen, so switching needs no
migration. Each field's store is one :class:`StoreHead` row (its newest version)
and the ordered :class:`StoreChange` rows after it; see
:mod:`django_embeddings.store.database` for how versions stay in commit order.
"""

from __future__ import annotations

from django.db import models


class StoreHead(models.Model):
    """One store's newest version, the row every writer locks to number its changes."""

    label: models.CharField[str, str] = models.CharField(max_length=255, unique=True)
    version: models.BigIntegerField[int, int] = models.BigIntegerField(default=0)
    # Changes at or below ``horizon`` may be gone (superseded rows removed by
    # compaction): a copy older than it is rebuilt from the table, not caught up.
    horizon: models.BigIntegerField[int, int] = models.BigIntegerField(default=0)
    # New for each head row: a local copy made from another database (or from this
    # one before it was recreated) names another token and is rebuilt.
    token: models.CharField[str, str] = models.CharField(max_length=32)

    class Meta:
        db_table = "django_embeddings_head"

    def __str__(self) -> str:
        return f"{self.label} at version {self.version}"


class StoreChange(models.Model):
    """One put or delete of a store, numbered in commit order."""

    label: models.CharField[str, str] = models.CharField(max_length=255)
    version: models.BigIntegerField[int, int] = models.BigIntegerField()
    op: models.CharField[str, str] = models.CharField(max_length=3)  # "put" or "del"
    key: models.CharField[str, str] = models.CharField(max_length=255)
    vector: models.BinaryField[bytes | None, bytes | None] = models.BinaryField(
        null=True
    )  # little-endian float32, as stored
    content_hash: models.CharField[str, str] = models.CharField(max_length=64, blank=True)
    identity: models.CharField[str, str] = models.CharField(max_length=255, blank=True)
    terms: models.TextField[str | None, str | None] = models.TextField(
        null=True
    )  # the encoded bag of terms; null: not known
    stamp: models.BigIntegerField[int, int] = models.BigIntegerField(
        default=0
    )  # seconds since the epoch, for gc's age guard

    class Meta:
        db_table = "django_embeddings_change"
        constraints = [
            models.UniqueConstraint(fields=["label", "version"], name="django_embeddings_version"),
        ]
        indexes = [models.Index(fields=["label", "key", "version"], name="django_embeddings_key")]

    def __str__(self) -> str:
        return f"{self.label} {self.op} {self.key} at version {self.version}"
