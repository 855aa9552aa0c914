"""Settings for the example project's tests: the suite's settings plus the example app.

The example app is kept out of ``tests.settings`` so that the suite's tests
(which list every EmbeddingField, for instance) never see its model. Run with
``pytest --ds=tests.example.settings tests/example``.
"""

from __future__ import annotations

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [
    *INSTALLED_APPS,
    "django.contrib.staticfiles",
    "rest_framework",
    "example_project.docs",
]
ROOT_URLCONF = "example_project.urls"
STATIC_URL = "static/"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

# The example runs on the built-in local model, so its tests do too.
DJANGO_EMBEDDINGS_PROVIDERS = {
    "default": {"BACKEND": "django_embeddings.providers.StaticModelProvider"},
}

# Fast hashing: the tests log in and create users, never store real passwords.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
