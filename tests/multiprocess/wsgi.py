"""The WSGI application gunicorn serves in the multi-process tests."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.multiprocess.settings")
application = get_wsgi_application()
