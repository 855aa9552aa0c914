from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tests.databases import (
    MARIADB_PREFIX,
    mariadb_database,
    mysqlclient_installed,
    postgres_database,
    vendor,
)

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
ROOT_URLCONF = "tests.urls"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.messages",
    "django.contrib.sessions",
    "django_embeddings",
    "tests.testapp",
    "tests.otherapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


# DJANGO_EMBEDDINGS_TEST_DB=postgres or =mariadb (or mysql) runs the suite on that
# server. A test database per run, so that runs in parallel (tox environments, a
# developer's run beside CI) never drop each other's tables.
if vendor() == "postgres":
    DATABASES = {
        "default": {
            **postgres_database("test"),
            "TEST": {"NAME": f"test_django_embeddings_{os.getpid()}"},
        }
    }
elif vendor() == "mariadb" and mysqlclient_installed():
    DATABASES = {
        "default": mariadb_database(
            f"{MARIADB_PREFIX}django_embeddings", test_name=f"test_django_embeddings_{os.getpid()}"
        )
    }
else:
    # Also a MariaDB run without mysqlclient: Django can start, and conftest.py skips
    # every test saying why (or fails under CI=true).
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

# A second database: each database has a store of its own (tests/test_databases.py).
DATABASES["other"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ.get("DJANGO_EMBEDDINGS_TEST_REDIS", "redis://127.0.0.1:6379/0"),
    }
}

# Tests use the deterministic hashing provider unless they ask for another alias.
DJANGO_EMBEDDINGS_PROVIDERS = {
    "default": {"BACKEND": "tests.utils.CountingProvider", "OPTIONS": {"dimensions": 64}},
    "static": {"BACKEND": "django_embeddings.providers.StaticModelProvider"},
    "small": {
        "BACKEND": "django_embeddings.providers.HashingProvider",
        "OPTIONS": {"dimensions": 16},
    },
}
# Each test gets its own directory and a pytest session one of its own (conftest.py).
# Nothing is created here: every child process the tests start imports this module,
# and each would leave a directory behind. Child processes that write are given
# their store directory by the test.
DJANGO_EMBEDDINGS_DIR = Path(tempfile.gettempdir()) / "django-embeddings-tests-unused"
DJANGO_EMBEDDINGS_INVALIDATION = "mtime"
# DJANGO_EMBEDDINGS_TEST_SCAN=int8 runs the suite with the int8 scan.
DJANGO_EMBEDDINGS_SCAN = os.environ.get("DJANGO_EMBEDDINGS_TEST_SCAN", "float32")
