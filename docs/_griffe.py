"""A griffe extension that reads lipguard's docstrings as the site shows them.

lipguard's docstrings use Sphinx markup: cross-reference roles (``:func:`certify```,
``:class:`~lipguard.norm.Norm```) and ``#:`` comments that document constants. griffe reads
neither, so this extension

- gives an attribute documented by ``#:`` comments (above it, or after it on its line) that
  comment as its docstring, and
- rewrites every role into a Markdown cross-reference when its target is rendered in the API
  reference (``docs/api/*.md``), and into inline code otherwise — so the site never shows raw
  ``:func:`` text, and every link it writes resolves (``mkdocs build --strict`` checks).

Targets resolve as Sphinx resolves them: a dotted path as written, else relative to the object's
class, module and package.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

API = Path(__file__).parent / "api"
ROLE = re.compile(r":(?:py:)?(func|class|meth|attr|data|mod|exc|obj|const):`(~?)([\w.]+)(?:\(\))?`")
#: a `::: path` entry of a reference page and its indented options
DIRECTIVE = re.compile(r"^::: ([\w.]+)\n((?:    .*\n)*)", re.MULTILINE)


class SphinxMarkup(griffe.Extension):
    """Sphinx ``#:`` comments and cross-reference roles, read for mkdocstrings."""

    def on_attribute_instance(self, *, node: Any, attr: griffe.Attribute, **kwargs: Any) -> None:
        if attr.docstring is not None or attr.lineno is None:
            return
        lines = attr.module.lines
        comment: list[str] = []
        row = attr.lineno - 2  # the line above the assignment, 0-based
        while row >= 0 and lines[row].strip().startswith("#:"):
            comment.insert(0, lines[row].strip().removeprefix("#:").strip())
            row -= 1
        if not comment and "#:" in lines[attr.lineno - 1]:
            comment = [lines[attr.lineno - 1].split("#:", 1)[1].strip()]
        if comment:
            attr.docstring = griffe.Docstring("\n".join(comment), lineno=attr.lineno, parent=attr)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        rendered = _rendered(pkg)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(
                    lambda match, obj=obj: _reference(match, obj, pkg, rendered),
                    obj.docstring.value,
                )


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    """``obj`` and every object it defines (aliases excluded: their targets are walked)."""
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_walk(member))
    return found


def _lookup(pkg: griffe.Module, path: str) -> griffe.Object | None:
    """The object at ``path`` (aliases followed), or None outside lipguard or unresolvable."""
    root, _, rest = path.partition(".")
    if root != pkg.name:
        return None
    try:
        found = pkg[rest] if rest else pkg
        return found.final_target if found.is_alias else found
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _rendered(pkg: griffe.Module) -> set[str]:
    """The canonical paths of every object the API pages render (members included).

    A module rendered without its heading has a Markdown anchor of its path on its page
    (``[](){#lipguard.nn}``), so every ``::: path`` is a link target.
    """
    paths: set[str] = set()

    def add(obj: griffe.Object, whole: bool) -> None:
        paths.add(obj.path)
        if obj.is_class or whole:
            for name, member in obj.members.items():
                # mkdocstrings shows a member only with a docstring (show_if_no_docstring)
                if name.startswith("_") or member.is_alias or member.docstring is None:
                    continue
                add(member, whole=False)

    for page in sorted(API.glob("*.md")):
        for path, options in DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            target = _lookup(pkg, path)
            if target is not None:
                # a module rendered with `members: false` shows only its own docstring
                add(target, whole=target.is_module and "members: false" not in options)
    return paths


def _reference(
    match: re.Match[str], obj: griffe.Object, pkg: griffe.Module, rendered: set[str]
) -> str:
    _, short, name = match.groups()
    shown = name.rsplit(".", 1)[-1] if short else name
    scopes = [obj.path]
    parent = obj.parent
    while parent is not None:
        scopes.append(parent.path)
        parent = parent.parent
    for candidate in [name, *(f"{scope}.{name}" for scope in scopes)]:
        target = _lookup(pkg, candidate)
        if target is not None:
            if target.path in rendered:
                return f"[`{shown}`][{target.path}]"
            break
    return f"`{shown}`"
