"""The search page, its JSON API, the REST API and the admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("example_project.docs.rest")),
    path("", include("example_project.docs.urls")),
]
