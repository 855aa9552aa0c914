from __future__ import annotations

from django.apps import AppConfig


class DocsConfig(AppConfig):
    name = "example_project.docs"
    label = "docs"
    verbose_name = "Python documentation"
