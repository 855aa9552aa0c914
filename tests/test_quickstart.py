"""The README's Installation and Quick start, done as a new user does them.

A fresh virtualenv, a real (non-editable) ``pip install`` of this checkout, so
that what is missing from the wheel (the static model, templates) shows;
``django-admin startproject`` and ``startapp``; the settings, the model, the
commands and the shell session taken from the README's own code blocks, so that
the README and this test cannot drift apart. Nothing else is configured.

It builds a virtualenv and installs the dependencies (from pip's cache after the
first run), so it runs only when ``DJANGO_EMBEDDINGS_TEST_QUICKSTART=1``, which
tox sets in one environment.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("DJANGO_EMBEDDINGS_TEST_QUICKSTART") != "1",
        reason="set DJANGO_EMBEDDINGS_TEST_QUICKSTART=1 to run the README quick start "
        "(tox does, in one environment)",
    ),
]

# Runs in `manage.py shell -c`: the Quick start session statement by statement,
# reporting the value of each bare expression (what the shell would echo), then
# the hits, for the promises the comments make about them.
SESSION = """
import ast, json

def describe(value):
    if isinstance(value, (str, int, float, bool, type(None))):
        return {"type": type(value).__name__, "repr": repr(value), "value": value}
    if hasattr(value, "pk"):
        return {"type": type(value).__name__, "pk": value.pk}
    return {"type": type(value).__name__, "pks": [item.pk for item in value]}

snippet = SNIPPET
namespace = globals()
echoed = {}
for node in ast.parse(snippet).body:
    if isinstance(node, ast.Expr):
        value = eval(compile(ast.Expression(node.value), "<quick start>", "eval"), namespace)
        echoed[node.lineno] = describe(value)
    else:
        exec(compile(ast.Module([node], []), "<quick start>", "exec"), namespace)
hits = namespace["hits"]
report = {
    "echoed": echoed,
    "hits": [{"pk": h.pk, "title": h.title, "similarity": h.similarity} for h in hits],
}
print("QUICKSTART " + json.dumps(report))
"""


def section(title: str) -> str:
    """The README text under ``## title``, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README.read_text(), re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def comments(code: str) -> dict[int, str]:
    """Line number -> the text of that line's comment."""
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    return {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}


def installation_settings() -> tuple[list[str], list[str]]:
    """The apps the Installation section adds to INSTALLED_APPS, and its other settings."""
    apps: list[str] = []
    others: list[str] = []
    for block in code_blocks(section("Installation"), "python"):
        for node in ast.parse(block).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else None
            assert isinstance(target, ast.Name) and target.id.isupper(), (
                f"README Installation: expected only settings, found {ast.unparse(node)!r}"
            )
            if target.id == "INSTALLED_APPS":
                assert isinstance(node.value, ast.List)
                apps += [
                    e.value
                    for e in node.value.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)
                ]
            else:
                others.append(ast.get_source_segment(block, node) or "")
    assert "django_embeddings" in apps and others, "README Installation: no settings found"
    return apps, others


def user_env() -> dict[str, str]:
    """This environment without what the test run sets for itself (settings, dev mode)."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "PYTHON", "VIRTUAL_ENV", "COV", "PYTEST"))
    }


def run(args: list[str], cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{shlex.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}"
        f"\n{result.stderr[-5000:]}"
    )
    return result.stdout


def test_readme_quick_start(tmp_path: Path) -> None:
    # Installation: a fresh virtualenv and a real install from a copy of the
    # checkout (an in-tree build would leave build/ behind, and stale files in
    # it could hide what the wheel lacks).
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".tox",
            ".venv*",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
        ),
    )
    run([sys.executable, "-m", "venv", str(tmp_path / "venv")], tmp_path)
    python = str(tmp_path / "venv" / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", str(source)], tmp_path, timeout=900)

    project = tmp_path / "project"
    project.mkdir()
    run([str(tmp_path / "venv" / "bin" / "django-admin"), "startproject", "mysite", "."], project)
    run([python, "manage.py", "startapp", "blog"], project)
    apps, others = installation_settings()
    with (project / "mysite" / "settings.py").open("a") as settings:
        settings.write(f"\nINSTALLED_APPS += {[*apps, 'blog']!r}\n")
        settings.write("".join(f"{line}\n" for line in others))

    # Quick start: the model, the commands, then the shell session.
    quick_start = section("Quick start")
    model, session = code_blocks(quick_start, "python")
    assert model.startswith("# models.py\n")
    (project / "blog" / "models.py").write_text(model)
    for block in code_blocks(quick_start, "console"):
        for line in block.splitlines():
            command = shlex.split(line)
            assert command[:2] == ["python", "manage.py"], f"unexpected command {line!r}"
            run([python, *command[1:]], project)

    code = SESSION.replace("SNIPPET", repr(session))
    out = run([python, "manage.py", "shell", "--verbosity", "0", "-c", code], project)
    (report,) = [json.loads(line[11:]) for line in out.splitlines() if line[:11] == "QUICKSTART "]

    # What the comments promise: each echoed expression with its comment.
    notes = comments(session)
    echoed: dict[str, tuple[Any, str]] = {
        str(ast.get_source_segment(session, node)): (
            report["echoed"][str(node.lineno)],
            notes.get(node.end_lineno or node.lineno, ""),
        )
        for node in ast.parse(session).body
        if isinstance(node, ast.Expr)
    }

    title, note = echoed["hits[0].title"]
    assert title["repr"] == note == "'CSV'"

    similarity, note = echoed["hits[0].similarity"]
    assert "[-1, 1], best first" in note
    assert similarity["type"] == "float" and -1 <= similarity["value"] <= 1
    scores = [hit["similarity"] for hit in report["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert [hit["title"] for hit in report["hits"]] == ["CSV", "HTTP"]

    similar, note = echoed["Article.objects.similar_to(hits[0], k=5)"]
    assert "never returns hits[0] itself" in note
    assert similar["pks"] == [report["hits"][1]["pk"]]  # the other row, not hits[0]
