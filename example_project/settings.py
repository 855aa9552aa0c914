"""Settings for the example project: SQLite, the built-in local model, one process.

Fine on your own machine; lines marked "Dangerous" must change before this runs
anywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

# Dangerous: a secret key in source control lets anyone forge sessions and
# password-reset links. Read it from the environment in production.
SECRET_KEY = "django-insecure-example-project-only"

# Dangerous: DEBUG shows tracebacks and settings to whoever can reach the server.
DEBUG = True

ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",  # the REST API's browsable pages (example_project/docs/rest.py)
    "django_embeddings",
    "example_project.docs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# -- django_embeddings --------------------------------------------------------------
#
# No DJANGO_EMBEDDINGS_PROVIDERS: the default is the built-in local model
# (StaticModelProvider), which runs offline on the CPU. Spelled out, it is:
#
# DJANGO_EMBEDDINGS_PROVIDERS = {
#     "default": {"BACKEND": "django_embeddings.providers.StaticModelProvider"},
# }

# Where the vectors live: .npy files, a journal and a packed snapshot.
DJANGO_EMBEDDINGS_DIR = BASE_DIR / "embeddings"

# One server process: "mtime" makes each search stat the store's journal and
# read only what changed, so rows saved from `manage.py shell` or a backfill in
# another process show up at once. "none" skips even that stat; use it only
# when this process is the store's only writer.
DJANGO_EMBEDDINGS_INVALIDATION = os.environ.get("DJANGO_EMBEDDINGS_INVALIDATION", "mtime")

# Production, several worker processes (gunicorn, uwsgi), possibly on several
# machines sharing DJANGO_EMBEDDINGS_DIR: every write is published on Redis
# and peers apply it at once; if Redis goes away they fall back to the
# version check, never to stale results.
#
# CACHES = {
#     "default": {
#         "BACKEND": "django_redis.cache.RedisCache",
#         "LOCATION": os.environ["REDIS_URL"],  # e.g. "redis://127.0.0.1:6379/0"
#     }
# }
# DJANGO_EMBEDDINGS_INVALIDATION = "pubsub"
# DJANGO_EMBEDDINGS_REDIS = "default"  # a CACHES alias served by django-redis, or a URL
# DJANGO_EMBEDDINGS_DIR = "/srv/embeddings"  # shared by every worker (NFS/EFS across machines)
