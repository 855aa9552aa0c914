"""``EmbeddingField``: the model field that embeds a source text on save.

The column holds the content hash of the source text as last saved through the
ORM (NULL when there is nothing to embed). ``pre_save`` writes it in the save's
own statement, so the database always says which text a row's vector must have
been made from: a search serves a row only when the store's vector carries the
same hash, and a row whose vector is not there yet (the process died after
commit, the provider failed, ``bulk_create``) is pending until
``embeddings_backfill`` embeds it. The vector itself lives in the field's store
(see :mod:`django_embeddings.store`), the way ``FileField`` keeps a short name in
the column and the payload in storage. The receivers that schedule the embedding
after commit live in :mod:`django_embeddings.signals`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, Unpack

from django.conf import settings
from django.core import checks
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, models, router

from django_embeddings.conf import conf
from django_embeddings.store import Permissions, Store
from django_embeddings.typing import DeconstructResult

Source = str | Callable[[models.Model], Any]


class FieldOptions(TypedDict, total=False):
    """The options of Django's ``Field`` that an EmbeddingField takes (typed, so that a
    misspelt option is an error in the user's editor)."""

    max_length: int
    null: bool
    blank: bool
    editable: bool
    db_column: str
    db_comment: str
    db_index: bool
    db_tablespace: str
    help_text: str
    serialize: bool
    unique: bool


HASH_LENGTH = 32  # hex digits of a 16-byte BLAKE2b digest


def content_hash(text: str) -> str:
    """The hash a text's vector is stored under, and the column records."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class EmbeddingField(models.CharField):  # type: ignore[type-arg]
    """Embeds ``source`` with a configured provider whenever the row is saved.

    ``source`` is a field name, the name of a method or property of the model, or a
    module-level function taking the instance, returning the text to embed.
    ``provider`` is an alias of ``DJANGO_EMBEDDINGS_PROVIDERS``. With
    ``auto_embed=False`` saves do nothing and rows are embedded only by
    ``embeddings_backfill``. With ``cache=False`` searches read the store each time
    instead of keeping its matrix in this process. With ``defer=True`` (default:
    the ``DJANGO_EMBEDDINGS_DEFER`` setting) saves enqueue a task after commit
    instead of calling the provider; the row stays missing until the task ran.
    With ``keywords=False`` the store keeps no terms of the texts, and the field has
    no ``keyword_search()`` nor ``hybrid_search()``.
    """

    description = "Content hash of the embedded source text (NULL: nothing to embed)"

    def __init__(
        self,
        verbose_name: str | None = None,
        name: str | None = None,
        *,
        source: Source | None = None,
        provider: str = "default",
        auto_embed: bool = True,
        cache: bool = True,
        defer: bool | None = None,
        keywords: bool = True,
        **kwargs: Unpack[FieldOptions],
    ) -> None:
        self.source = source
        self.keywords = keywords
        self.provider_alias = provider
        self.auto_embed = auto_embed
        self.cache = cache
        self.defer = defer
        kwargs.setdefault("max_length", HASH_LENGTH)
        kwargs.setdefault("null", True)
        kwargs.setdefault("blank", True)
        kwargs.setdefault("editable", False)
        super().__init__(verbose_name, name, **kwargs)

    def deconstruct(self) -> DeconstructResult:
        name, _, args, kwargs = super().deconstruct()
        for option, default in (("null", True), ("blank", True), ("editable", False)):
            if kwargs.get(option, not default) == default:
                kwargs.pop(option, None)
            else:
                kwargs[option] = not default
        if kwargs.get("max_length") == HASH_LENGTH:
            del kwargs["max_length"]
        kwargs["source"] = self.source
        if self.provider_alias != "default":
            kwargs["provider"] = self.provider_alias
        if not self.auto_embed:
            kwargs["auto_embed"] = False
        if not self.cache:
            kwargs["cache"] = False
        if self.defer is not None:
            kwargs["defer"] = self.defer
        if not self.keywords:
            kwargs["keywords"] = False
        return name, "django_embeddings.fields.EmbeddingField", args, kwargs

    def pre_save(self, model_instance: models.Model, add: bool) -> str | None:
        """Record the hash of the text being saved, in the save's own statement."""
        text = self.source_text(model_instance)
        value = content_hash(text) if text.strip() else None
        # What the column said before this save, for the receivers: an unchanged
        # hash needs no provider call even when this process holds no index.
        saved = model_instance.__dict__.setdefault(SAVED, {})
        # Django may call pre_save more than once per save: keep the first "before".
        if self.attname in saved:
            previous, _, mark = saved[self.attname]
        else:
            previous = model_instance.__dict__.get(self.attname)
            mark = self._mark(model_instance) if add else None
        saved[self.attname] = (previous, text, mark)
        setattr(model_instance, self.attname, value)
        return value

    def _mark(self, instance: models.Model) -> tuple[int, int] | None:
        """The store journal's state before this insert commits. If no other writer has
        appended to it by the time the new row's vector is stored, no vector of a newer
        text of the row can be stored yet (its writer committed after this insert, so it
        stores after it), and the check after storing is skipped. Updates are always
        checked: a concurrent save may have committed an older text that the store
        already holds, and made no store write of its own."""
        try:
            return self.store_for(
                router.db_for_write(type(instance), instance=instance)
            ).journal_mark()
        except Exception:  # no store configured: the write after commit reports it
            return None

    def formfield(self, **kwargs: Any) -> Any:
        return None  # the hash is not for people to edit

    # -- identity and storage --------------------------------------------------------

    @property
    def label(self) -> str:
        """``app_label.ModelName.field``: unique across apps and fields."""
        return f"{self.model._meta.label}.{self.name}"

    @property
    def store(self) -> Store:
        """The store of the database this model's rows are written to."""
        return self.store_for(router.db_for_write(self.model))

    def store_for(self, using: str, kind: str | None = None) -> Store:
        """The store of this field in database ``using``: each database has its own.

        ``kind`` (``"files"`` or ``"database"``) defaults to ``DJANGO_EMBEDDINGS_STORE``.
        """
        # A search asks for its store each time: building it costs more than the rest of
        # a small search's setup. Kept by database name (a test database is another
        # store) and directory; a change of our other settings clears it (setting_changed).
        key = (
            self.model._meta.label,
            self.name,
            using,
            connections[using].settings_dict.get("NAME"),
            getattr(settings, "DJANGO_EMBEDDINGS_DIR", None),
            kind or conf.STORE,
        )
        try:
            return _stores[key]
        except TypeError:  # a setting of the wrong type: the store's checks report it
            return self._new_store(using, kind)
        except KeyError:
            store = _stores[key] = self._new_store(using, kind)
            return store

    def _new_store(self, using: str, kind: str | None = None) -> Store:
        """A store of ``kind`` (``"files"`` or ``"database"``; default: the setting's)."""
        directory = conf.DIR
        if directory is None:
            raise ImproperlyConfigured(
                "DJANGO_EMBEDDINGS_DIR is not set; it should be the directory where "
                f"{self.label} keeps its vectors."
            )
        from django_embeddings.databases import store_root

        root = store_root(Path(directory), using)
        # Stores of other databases say so in their label (messages, logs, errors);
        # peers only apply messages for the default database's stores.
        label = self.label if using == DEFAULT_DB_ALIAS else f"{self.label}@{using}"
        permissions = Permissions(conf.FILE_PERMISSIONS, conf.DIRECTORY_PERMISSIONS)
        table_using = using if (kind or conf.STORE) == "database" else None
        if table_using is not None:
            root = root / "_database"  # this machine's copy, apart from a files store's
        return _store(
            root, self.model._meta.label, self.name, label, conf.COMPACT_THRESHOLD, permissions,
            table_using, int8=conf.SCAN == "int8", merge_in_background=conf.MERGE_IN_BACKGROUND,
        )  # fmt: skip

    @property
    def deferred(self) -> bool:
        """Do saves enqueue a task instead of embedding after commit?"""
        return conf.DEFER if self.defer is None else self.defer

    def get_provider(self) -> Any:
        from django_embeddings.providers import get_provider

        return get_provider(self.provider_alias)

    def key(self, pk: Any) -> str:
        """The store's key for a primary key value (its canonical string)."""
        return str(self.model._meta.pk.to_python(pk))

    def pk_from_key(self, key: str) -> Any:
        return self.model._meta.pk.to_python(key)

    def source_text(self, instance: models.Model) -> str:
        """The text to embed for ``instance``, cut to ``DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH``."""
        if callable(self.source):
            value = self.source(instance)
        else:
            value = getattr(instance, str(self.source))
            if callable(value):
                value = value()
        text = "" if value is None else str(value)
        return text[: conf.MAX_TEXT_LENGTH]

    def source_field_names(self) -> list[str] | None:
        """The concrete column behind ``source``, or ``None`` when it is computed."""
        if isinstance(self.source, str):
            try:
                return [self.model._meta.get_field(self.source).attname]  # type: ignore[union-attr]
            except FieldDoesNotExist:
                return None
        return None

    # -- checks ----------------------------------------------------------------------

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        return [
            *super().check(**kwargs),
            *self._check_source(),
            *self._check_primary_key(),
            *self._check_provider(),
            *self._check_tasks(),
        ]

    def _check_tasks(self) -> list[checks.CheckMessage]:
        from django_embeddings.tasks import framework

        if self.deferred and framework is None:
            return [
                checks.Error(
                    f"{self.label} defers embedding, but no tasks framework is installed.",
                    hint="Use Django 6.0+ (django.tasks), or pip install django-tasks and add "
                    '"django_tasks" to INSTALLED_APPS.',
                    obj=self,
                    id="django_embeddings.E010",
                )
            ]
        return []

    def _check_provider(self) -> list[checks.CheckMessage]:
        providers = conf.PROVIDERS
        if isinstance(providers, dict) and self.provider_alias not in providers:
            return [
                checks.Error(
                    f"{self.label} uses provider {self.provider_alias!r}, which is not in "
                    f"DJANGO_EMBEDDINGS_PROVIDERS ({sorted(providers)!r}).",
                    hint="Add the alias to DJANGO_EMBEDDINGS_PROVIDERS or use another one.",
                    obj=self,
                    id="django_embeddings.E009",
                )
            ]
        return []

    def _check_source(self) -> list[checks.CheckMessage]:
        if self.source is None:
            return [
                checks.Error(
                    f"{self.label} has no source.",
                    hint='Pass the field to embed, e.g. EmbeddingField(source="body").',
                    obj=self,
                    id="django_embeddings.E005",
                )
            ]
        if callable(self.source):
            return []
        try:
            self.model._meta.get_field(self.source)
            return []
        except FieldDoesNotExist:
            pass
        if hasattr(self.model, self.source):
            return []
        return [
            checks.Error(
                f"{self.label} has source {self.source!r}, which is neither a field nor an "
                f"attribute of {self.model._meta.object_name}.",
                hint="Name a text field, a property or a method of the model.",
                obj=self,
                id="django_embeddings.E006",
            )
        ]

    def _check_primary_key(self) -> list[checks.CheckMessage]:
        pk = self.model._meta.pk
        if pk is None or getattr(pk, "primary_key", False) is False or _is_composite(pk):
            return [
                checks.Error(
                    f"{self.label} needs a single-column primary key; "
                    f"{self.model._meta.object_name} has a composite one.",
                    hint="Give the model a single-column primary key.",
                    obj=self,
                    id="django_embeddings.E007",
                )
            ]
        return []


# Instance attribute where pre_save leaves (previous hash, text) per column for the
# receivers in signals.py; never saved.
SAVED = "_django_embeddings_saved"


def _is_composite(pk: Any) -> bool:
    return type(pk).__name__ == "CompositePrimaryKey"


_stores: dict[tuple[Any, ...], Store] = {}


@functools.cache
def _store(
    directory: Path,
    model_label: str,
    field_name: str,
    label: str,
    compact_threshold: int,
    permissions: Permissions,
    table_using: str | None = None,
    *,
    int8: bool = False,
    merge_in_background: bool = False,
) -> Store:
    """One store object per directory; ``table_using`` makes it the local copy of
    the database store whose tables live in that database; ``int8``: its snapshots
    keep an int8 copy of their rows; ``merge_in_background``: saves leave compactions
    (of a database store's local copy too) to a thread."""
    from django_embeddings.store.database import DatabaseStore

    path = Path(directory) / model_label / field_name
    if table_using is not None:
        return DatabaseStore(
            path, using=table_using, label=label, compact_threshold=compact_threshold,
            permissions=permissions, int8=int8, merge_in_background=merge_in_background,
        )  # fmt: skip
    return Store(
        path, label=label, compact_threshold=compact_threshold, permissions=permissions,
        int8=int8, merge_in_background=merge_in_background,
    )  # fmt: skip


def embedding_fields(model: type[models.Model]) -> tuple[EmbeddingField, ...]:
    """The embedding fields of ``model``, including inherited ones."""
    return _embedding_fields(model)


def embedding_field_named(
    model: type[models.Model], name: str | None, *, how_to_choose: str
) -> EmbeddingField:
    """The EmbeddingField of ``model`` called ``name``, or (``name`` being ``None``) its
    only one; a ``ValueError`` says which fields there are, and ``how_to_choose`` one."""
    fields = embedding_fields(model)
    names = [field.name for field in fields]
    if name is not None:
        for field in fields:
            if field.name == name:
                return field
        raise ValueError(
            f"{model._meta.label} has no EmbeddingField named {name!r}; it has {names!r}."
        )
    if len(fields) == 1:
        return fields[0]
    if not fields:
        raise ValueError(f"{model._meta.label} has no EmbeddingField.")
    raise ValueError(f"{model._meta.label} has several EmbeddingFields {names!r}; {how_to_choose}.")


@functools.cache
def _embedding_fields(model: Any) -> tuple[EmbeddingField, ...]:
    return tuple(f for f in model._meta.concrete_fields if isinstance(f, EmbeddingField))
