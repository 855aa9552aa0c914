from __future__ import annotations

from django.contrib import admin

from django_embeddings.admin import SemanticSearchAdminMixin
from example_project.docs.models import Document


@admin.register(Document)
class DocumentAdmin(SemanticSearchAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["title", "kind", "module", "embedded"]
    list_filter = ["kind"]
    search_fields = ["title", "body"]
    list_per_page = 25

    @admin.display(boolean=True, description="Embedded", ordering="embedding")
    def embedded(self, obj: Document) -> bool:
        return obj.embedding is not None
