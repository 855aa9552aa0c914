"""Settings for the child processes of the multi-process tests (peers, gunicorn workers).

Everything that must be shared between processes comes from the environment,
which the test sets: the database, the store directory, Redis and the channel.
``DJANGO_EMBEDDINGS_INVALIDATION`` is read from the environment by the app itself.
"""

from __future__ import annotations

import os

from tests.databases import mariadb_database, postgres_database, vendor

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
ROOT_URLCONF = "tests.multiprocess.urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
MIDDLEWARE: list[str] = []

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_embeddings",
    "tests.testapp",
    "tests.otherapp",
]

if vendor() == "postgres":
    DATABASES = {"default": postgres_database(os.environ["MP_DATABASE"])}
elif vendor() == "mariadb":
    DATABASES = {"default": mariadb_database(os.environ["MP_DATABASE"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ["MP_DATABASE"],
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL;",
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DJANGO_EMBEDDINGS_PROVIDERS = {
    "default": {"BACKEND": "tests.utils.CountingProvider", "OPTIONS": {"dimensions": 64}},
    "small": {
        "BACKEND": "django_embeddings.providers.HashingProvider",
        "OPTIONS": {"dimensions": 16},
    },
}
DJANGO_EMBEDDINGS_DIR = os.environ["MP_STORE_DIR"]
DJANGO_EMBEDDINGS_REDIS = os.environ.get("MP_REDIS_URL", "redis://127.0.0.1:6379/0")
DJANGO_EMBEDDINGS_CHANNEL = os.environ.get("MP_CHANNEL", "django_embeddings")
DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = int(os.environ.get("MP_COMPACT_THRESHOLD", "10000"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_embeddings": {
            "handlers": ["stderr"],
            "level": os.environ.get("MP_LOG_LEVEL", "WARNING"),
        }
    },
}
