from __future__ import annotations

from django.urls import path

from example_project.docs import async_views, views

app_name = "docs"

urlpatterns = [
    path("", views.search, name="search"),
    path("doc/<int:pk>/", views.document, name="document"),
    path("api/search", views.api_search, name="api-search"),
    path("api/async/search", async_views.api_search, name="api-search-async"),
]
