"""Django settings for the benchmark's worker processes.

Everything variable comes from the environment the orchestrator sets:
``BENCH_DB`` (``sqlite`` or ``postgres``), ``BENCH_SQLITE_PATH``, ``BENCH_PG_NAME``,
``DJANGO_EMBEDDINGS_DIR``, ``BENCH_REDIS_URL`` and, when set,
``DJANGO_EMBEDDINGS_STORE`` and ``DJANGO_EMBEDDINGS_COMPACT_THRESHOLD``.
"""

from __future__ import annotations

import os

SECRET_KEY = "bench-only-not-secret"
DEBUG = False  # DEBUG would record every SQL query
USE_TZ = True
INSTALLED_APPS = ["django_embeddings", "bench.benchapp"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if os.environ.get("BENCH_DB", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", ""),
            "NAME": os.environ.get("BENCH_PG_NAME", "django_embeddings_bench"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BENCH_SQLITE_PATH", ":memory:"),
        }
    }

DJANGO_EMBEDDINGS_DIR = os.environ.get("DJANGO_EMBEDDINGS_DIR", "/tmp/django-embeddings-bench")
DJANGO_EMBEDDINGS_STORE = os.environ.get("DJANGO_EMBEDDINGS_STORE", "files")
DJANGO_EMBEDDINGS_INVALIDATION = os.environ.get("DJANGO_EMBEDDINGS_INVALIDATION", "mtime")
DJANGO_EMBEDDINGS_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
DJANGO_EMBEDDINGS_PROVIDERS = {
    # Queries reach the searches as vectors; this provider serves saves (its time is
    # measured and subtracted) and gives the identity the corpora are stored under.
    "default": {"BACKEND": "bench.providers.BenchProvider"},
    "static": {"BACKEND": "bench.providers.TimedStaticModelProvider"},
    # The end-to-end benchmark's: each "row i" text embeds as row i of the seeded corpus.
    "corpus": {"BACKEND": "bench.providers.CorpusProvider"},
}
if "DJANGO_EMBEDDINGS_COMPACT_THRESHOLD" in os.environ:
    DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = int(os.environ["DJANGO_EMBEDDINGS_COMPACT_THRESHOLD"])
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
