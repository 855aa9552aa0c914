"""A small search/write API served by gunicorn in the multi-process tests."""

from __future__ import annotations

import json
import os
import time

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from django_embeddings import invalidation
from tests.testapp.models import Article


def search(request: HttpRequest) -> JsonResponse:
    """The best hit for ``q``, answered by which worker (``pid``).

    ``hold`` keeps this worker busy that long first, so that concurrent requests
    land on different workers.
    """
    time.sleep(min(float(request.GET.get("hold", 0)), 2.0))
    hits = list(Article.objects.semantic_search(request.GET["q"], k=1))
    return JsonResponse(
        {
            "pid": os.getpid(),
            "top": [hits[0].pk, hits[0].similarity] if hits else None,
            "healthy": invalidation.listener_healthy(),
        }
    )


@csrf_exempt
def write(request: HttpRequest) -> JsonResponse:
    data = json.loads(request.body)
    if data["op"] == "create":
        pk = Article.objects.create(title="t", body=data["body"]).pk
    elif data["op"] == "update":
        article = Article.objects.get(pk=data["pk"])
        article.body = data["body"]
        article.save()
        pk = article.pk
    else:
        pk = data["pk"]
        Article.objects.filter(pk=pk).delete()
    return JsonResponse({"pid": os.getpid(), "pk": pk})
