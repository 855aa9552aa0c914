"""Migration operations: moving a 0.1.0 column (a dimension count) to a content hash.

0.1.0 stored the vector's dimension count in an integer column; the column now
holds the hash of the source text. The field's migration state did not change
(both are ``EmbeddingField(source=...)``), so ``makemigrations`` cannot see it;
add this operation to a migration of your app once::

    from django_embeddings.operations import AlterEmbeddingColumnToHash

    class Migration(migrations.Migration):
        dependencies = [("blog", "0003_previous")]
        operations = [AlterEmbeddingColumnToHash("article", "embedding")]

then run ``manage.py embeddings_backfill``: it records each row's hash without
calling the provider where the stored vector is of the row's current text.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.migrations.operations.base import Operation


class AlterEmbeddingColumnToHash(Operation):
    reversible = True

    def __init__(self, model_name: str, name: str) -> None:
        self.model_name = model_name
        self.name = name

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [self.model_name, self.name], {})

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass  # the state already describes the hash column

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            new = model._meta.get_field(self.name)
            schema_editor.alter_field(model, _integer_column(model, new), new)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            new = model._meta.get_field(self.name)
            model._base_manager.using(schema_editor.connection.alias).update(**{new.attname: None})
            schema_editor.alter_field(model, new, _integer_column(model, new))

    def describe(self) -> str:
        return f"Store content hashes in {self.model_name}.{self.name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"{self.model_name}_{self.name}_hash"


def _integer_column(
    model: type[models.Model], field: models.Field[Any, Any]
) -> models.Field[Any, Any]:
    old: models.Field[Any, Any] = models.IntegerField(null=True, blank=True, db_column=field.column)
    old.set_attributes_from_name(field.name)
    old.model = model
    return old
