"""Collect the documentation of the Python standard library that ships with the interpreter.

Documents are the docstrings of public modules, classes, exceptions, functions and
methods, plus the language reference topics in ``pydoc_data.topics`` (what
``help("assert")`` shows). Nothing is downloaded.

Importing a module runs its code, so this file uses the standard library only and
is meant to run in a child process (``python -I corpus.py OUTPUT``): a module that
misbehaves on import can at worst end that process. Modules with visible side
effects (``antigravity`` opens a browser, ``this`` prints), GUI toolkits, test
suites and ``__main__`` modules are never imported.

Each line of OUTPUT is one JSON object with ``kind``, ``name``, ``title``,
``module``, ``signature`` and ``body``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

# Never imported: side effects, GUI toolkits, test suites, removed or deprecated
# shims that write files on import, and modules the documentation hides.
SKIP_MODULES = frozenset(
    {
        "antigravity",
        "this",
        "tkinter",
        "turtle",
        "turtledemo",
        "idlelib",
        "test",
        "lib2to3",
        "distutils",
        "ensurepip",
        "pydoc_data",
        "sitecustomize",
        "usercustomize",
        "genericpath",
        "ntpath",
        "nturl2path",
        "xxlimited",
        "xxlimited_35",
        "xxsubtype",
        "msilib",
        "posix",
    }
)
SKIP_PARTS = frozenset({"test", "tests", "idle_test", "__main__"})
# Submodules listed one by one add nothing here (hundreds of codecs, vendored wheels).
NO_SUBMODULES = frozenset({"encodings", "ensurepip"})
# Where the documentation says a module lives under another name.
DISPLAY_NAMES = {"posixpath": "os.path"}
# Implementation modules whose objects are documented where they are re-exported.
HIDDEN_HOMES = frozenset({"genericpath", "posixpath", "ntpath", "posix"})

Record = dict[str, str]


def module_names() -> Iterator[str]:
    """Public standard library modules, packages first, then their submodules."""
    for name in sorted(sys.stdlib_module_names):
        if _skipped(name):
            continue
        yield name
        module = _import(name)
        if module is not None and hasattr(module, "__path__") and name not in NO_SUBMODULES:
            yield from _submodules(module)


def _submodules(package: types.ModuleType) -> Iterator[str]:
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        name = f"{package.__name__}.{info.name}"
        if _skipped(name):
            continue
        yield name
        if info.ispkg:
            module = _import(name)
            if module is not None:
                yield from _submodules(module)


def _skipped(name: str) -> bool:
    parts = name.split(".")
    return (
        parts[0] in SKIP_MODULES
        or any(part.startswith("_") for part in parts)
        or any(part in SKIP_PARTS for part in parts)
    )


_imported: dict[str, types.ModuleType | None] = {}


def _import(name: str) -> types.ModuleType | None:
    if name not in _imported:
        # Whatever a module prints goes to this process's stdout, which the
        # caller discards; it is not redirected here, so that defaults such as
        # ``file=sys.stdout`` keep the real stream.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _imported[name] = importlib.import_module(name)
        except BaseException:  # ImportError on other platforms, SystemExit, anything
            _imported[name] = None
    return _imported[name]


def _doc(obj: Any) -> str:
    """The object's own docstring, never one inherited from a base class."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


# Defaults shown by name. The environment holds secrets; the others differ
# between machines or runs.
_NAMED = {
    id(os.environ): "os.environ",
    id(sys.executable): "sys.executable",
    id(sys.stdin): "sys.stdin",
    id(sys.stdout): "sys.stdout",
    id(sys.stderr): "sys.stderr",
}


class _Shown:
    """A default value shown by name: ``environ=os.environ``, not its contents."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _signature(obj: Any) -> str:
    try:
        signature = inspect.signature(obj)
    except Exception:  # builtins without text signatures, odd defaults (curses)
        return ""
    # Never print the environment (cgi's functions default to os.environ).
    parameters = [
        p.replace(default=_Shown(_NAMED[id(p.default)])) if id(p.default) in _NAMED else p
        for p in signature.parameters.values()
    ]
    text = str(signature.replace(parameters=parameters))
    # Sentinel defaults print their address, which changes from run to run.
    return _ADDRESS.sub("", text)


def _public(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = [name for name in vars(module) if not name.startswith("_")]
    return sorted({str(name) for name in names if not str(name).startswith("_")})


def _home_is_hidden(home: str) -> bool:
    return home in HIDDEN_HOMES or any(part.startswith("_") for part in home.split("."))


def _is_function(obj: Any) -> bool:
    return inspect.isfunction(obj) or inspect.isbuiltin(obj)


def documents() -> Iterator[Record]:
    seen: set[int] = set()
    for name in module_names():
        module = _import(name)
        if module is None:
            continue
        shown = DISPLAY_NAMES.get(name, name)
        doc = _doc(module)
        if doc:
            yield _record("module", shown, shown, shown, "", doc)
        for attr in _public(module):
            obj = getattr(module, attr, None)
            if not (isinstance(obj, type) or _is_function(obj)) or id(obj) in seen:
                continue
            home = getattr(obj, "__module__", None) or ""
            # Documented where it is defined, or where the documentation puts it: in a
            # package that re-exports it from an implementation module (asyncio.Task
            # lives in _asyncio, asyncio.wait in asyncio.tasks, json.JSONDecoder in
            # json.decoder). Packages come before their submodules, so they win.
            exported = attr in getattr(module, "__all__", ())
            if not (
                home == name or _home_is_hidden(home) or (exported and home.startswith(f"{name}."))
            ):
                continue
            seen.add(id(obj))
            yield from _object(shown, attr, obj)
    yield from _topics()


def _object(module: str, attr: str, obj: Any) -> Iterator[Record]:
    title = f"{module}.{attr}" if module != "builtins" else attr
    doc = _doc(obj)
    if isinstance(obj, type):
        kind = "exception" if issubclass(obj, BaseException) else "class"
        if doc:
            yield _record(kind, title, title, module, _signature(obj), doc)
        for method_name, method in sorted(vars(obj).items()):
            if method_name.startswith("_"):
                continue
            if isinstance(method, (classmethod, staticmethod)):
                method = method.__func__
            if not (_is_function(method) or inspect.ismethoddescriptor(method)):
                continue
            method_doc = _doc(method)
            if method_doc:
                method_title = f"{title}.{method_name}"
                yield _record(
                    "method", method_title, method_title, module, _signature(method), method_doc
                )
    elif doc:
        yield _record("function", title, title, module, _signature(obj), doc)


def _topics() -> Iterator[Record]:
    from pydoc_data.topics import topics

    for key, text in sorted(topics.items()):
        lines = text.strip().splitlines()
        heading = lines[0].strip() if lines else key
        body = "\n".join(lines[2:] if len(lines) > 1 and set(lines[1]) <= {"*"} else lines)
        yield _record("topic", key, heading, "", "", inspect.cleandoc(body))


def _record(kind: str, name: str, title: str, module: str, signature: str, body: str) -> Record:
    return {
        "kind": kind,
        "name": name,
        "title": title,
        "module": module,
        "signature": signature,
        "body": body,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(f"usage: {argv[0]} OUTPUT.jsonl\n")
        return 2
    count = 0
    with open(argv[1], "w", encoding="utf-8") as output:
        for record in documents():
            output.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    sys.stderr.write(f"{count} documents\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
