"""The API reference is complete: every public name is documented and has an entry.

Every ``lipguard`` package with an ``__all__`` is imported; each name in it must

- have a docstring: a class or function lipguard defines, its own ``__doc__`` (a dataclass's
  generated signature does not count); a constant or type alias, a ``#:`` comment above its
  assignment (or after it on its line) or a string right after it — what the site shows
  (``docs/_griffe.py``); a module, its docstring;
- appear in the reference pages ``docs/api/*.md`` as ``::: package.Name`` (a module name, as a
  ``::: module`` entry of its own).

Modules rendered whole (``::: lipguard.errors``) must document each public class and function
they define, since the site shows only documented members. No mkdocs is needed: this runs with
the test suite, so a new public name without docs fails CI before the site is built.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import types
from pathlib import Path

import pytest

import lipguard

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api"
DIRECTIVE = re.compile(r"^::: ([\w.]+)\n((?:    .*\n)*)", re.MULTILINE)


def _public_modules() -> list[str]:
    names = ["lipguard"]
    for info in pkgutil.walk_packages(lipguard.__path__, "lipguard."):
        parts = info.name.split(".")
        if not any(part.startswith("_") for part in parts[1:]):
            names.append(info.name)
    return names


MODULES = {name: importlib.import_module(name) for name in _public_modules()}
# packages (the modules users import from): their ``__all__`` is the public API
EXPORTING = {
    name: module
    for name, module in MODULES.items()
    if hasattr(module, "__all__") and hasattr(module, "__path__")
}
PUBLIC = [(package, name) for package, module in EXPORTING.items() for name in module.__all__]


def _directives() -> dict[str, str]:
    """``path -> options`` of every ``::: path`` entry of the reference pages."""
    found: dict[str, str] = {}
    for page in sorted(API.glob("*.md")):
        for path, options in DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            found[path] = options
    return found


DIRECTIVES = _directives()


def _source(module: types.ModuleType) -> tuple[list[str], ast.Module]:
    text = Path(inspect.getfile(module)).read_text(encoding="utf-8")
    return text.splitlines(), ast.parse(text)


def _defining_module(package: types.ModuleType, name: str) -> types.ModuleType:
    """The module whose top level assigns ``name``, following ``from X import name`` chains."""
    _, tree = _source(package)
    for node in tree.body:
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and any((alias.asname or alias.name) == name for alias in node.names)
        ):
            return _defining_module(importlib.import_module(node.module), name)
    return package


def _attribute_documented(module: types.ModuleType, name: str) -> bool:
    """A ``#:`` comment above (or after) the assignment of ``name``, or a string after it."""
    lines, tree = _source(module)
    for index, node in enumerate(tree.body):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if not any(isinstance(target, ast.Name) and target.id == name for target in targets):
            continue
        above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
        after = tree.body[index + 1] if index + 1 < len(tree.body) else None
        return (
            above.startswith("#:")
            or "#:" in lines[node.lineno - 1]
            or (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
                and bool(after.value.value.strip())
            )
        )
    return False


def _own_docstring(obj: object) -> str:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):  # a dataclass's signature
        return ""
    return doc.strip()


def _documented(package: str, name: str) -> bool:
    obj = getattr(EXPORTING[package], name)
    if inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj):
        return bool(_own_docstring(obj))
    return _attribute_documented(_defining_module(EXPORTING[package], name), name)


def test_every_package_is_found():
    assert {"lipguard", "lipguard.nn", "lipguard.bounds", "lipguard.monitor"} <= set(EXPORTING)
    assert len(PUBLIC) > 200


@pytest.mark.parametrize(("package", "name"), PUBLIC, ids=[f"{p}.{n}" for p, n in PUBLIC])
def test_public_name_is_documented(package, name):
    assert _documented(package, name), f"{package}.{name} has no docstring"


@pytest.mark.parametrize(("package", "name"), PUBLIC, ids=[f"{p}.{n}" for p, n in PUBLIC])
def test_public_name_has_reference_entry(package, name):
    obj = getattr(EXPORTING[package], name)
    path = f"{package}.{name}"
    listed = path in DIRECTIVES or (inspect.ismodule(obj) and obj.__name__ in DIRECTIVES)
    assert listed, f"no '::: {path}' entry in docs/api/*.md"


def test_reference_entries_exist():
    """Every ``::: path`` names something that exists (a typo would render nothing)."""
    for path in DIRECTIVES:
        module_path, _, attribute = path.rpartition(".")
        if path in MODULES:
            continue
        assert module_path in MODULES, f"::: {path}: no module {module_path}"
        assert hasattr(MODULES[module_path], attribute), f"::: {path} does not exist"


def test_modules_rendered_whole_document_their_members():
    whole = [
        path
        for path, options in DIRECTIVES.items()
        if path in MODULES and "members: false" not in options
    ]
    assert whole
    for path in whole:
        module = MODULES[path]
        assert _own_docstring(module), f"{path} has no module docstring"
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != path:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert _own_docstring(obj), f"{path}.{name} has no docstring"
