from __future__ import annotations

from django.contrib import admin

from django_embeddings.admin import SemanticSearchAdminMixin
from example_project.docs.models import Document


@admin.register(Document)
class DocumentAdmin(SemanticSearchAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    # The embedding column shows each row's state: embedded, pending, stale or "-".
    list_display = ["title", "kind", "module", "embedding"]
    list_filter = ["kind"]
    search_fields = ["title", "body"]
    list_per_page = 25
