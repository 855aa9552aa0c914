"""Settings of the child processes the reliability tests start.

Every child runs its own ``django.setup()`` against the dedicated PostgreSQL
(or MariaDB) database and the store directory the parent names in the environment.
"""

from __future__ import annotations

import os

from tests.databases import mariadb_database, postgres_database
from tests.settings import *  # noqa: F403

_NAME = os.environ.get("DJANGO_EMBEDDINGS_REL_DB", "django_embeddings_rel")
if os.environ.get("DJANGO_EMBEDDINGS_REL_VENDOR") == "mariadb":
    DATABASES = {"default": mariadb_database(_NAME)}
else:
    DATABASES = {"default": postgres_database(_NAME)}

DJANGO_EMBEDDINGS_DIR = os.environ.get("DJANGO_EMBEDDINGS_REL_DIR", DJANGO_EMBEDDINGS_DIR)  # noqa: F405
# "database": the tables are the store, DJANGO_EMBEDDINGS_DIR this process's machine's copy.
DJANGO_EMBEDDINGS_STORE = os.environ.get("DJANGO_EMBEDDINGS_REL_STORE", "files")
DJANGO_EMBEDDINGS_INVALIDATION = "mtime"  # the environment variable wins (pubsub tests set it)
DJANGO_EMBEDDINGS_REDIS = os.environ.get("DJANGO_EMBEDDINGS_REL_REDIS", "default")
DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = int(
    os.environ.get("DJANGO_EMBEDDINGS_REL_COMPACT_THRESHOLD", "10000")
)
DJANGO_EMBEDDINGS_ON_ERROR = os.environ.get("DJANGO_EMBEDDINGS_REL_ON_ERROR", "raise")
DJANGO_EMBEDDINGS_PROVIDERS = {
    "default": {
        "BACKEND": "django_embeddings.providers.HashingProvider",
        "OPTIONS": {"dimensions": 64},
    },
    "small": {
        "BACKEND": "django_embeddings.providers.HashingProvider",
        "OPTIONS": {"dimensions": 16},
    },
}
if os.environ.get("DJANGO_EMBEDDINGS_REL_PROVIDER"):
    # A faulty provider from tests.reliability.providers replaces the default one.
    DJANGO_EMBEDDINGS_PROVIDERS["default"] = {
        "BACKEND": os.environ["DJANGO_EMBEDDINGS_REL_PROVIDER"],
        "OPTIONS": {"dimensions": 64},
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
