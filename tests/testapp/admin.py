from __future__ import annotations

from django.contrib import admin

from django_embeddings.admin import SemanticSearchAdminMixin
from tests.testapp.models import Article, Product


@admin.register(Article)
class ArticleAdmin(SemanticSearchAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["title", "published", "embedding"]
    search_fields = ["title", "body"]
    ordering = ["title"]


@admin.register(Product)
class ProductAdmin(SemanticSearchAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    semantic_search_field = "full_embedding"
    fields = ["name", "description", "full_embedding"]
