from __future__ import annotations

from django.urls import path

from tests.multiprocess import views

urlpatterns = [path("search", views.search), path("write", views.write)]
