"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks``).

- The home page is the README, with its ``docs/…`` links made relative to the site.
- A link from a guide to a script of the repository (``../examples/x.py``,
  ``../benchmarks/x.py``) points to a generated page that shows the script, so the site has
  no link out of itself.
- ``<!-- lipguard-help VERB -->`` in a page is replaced by ``lipguard VERB --help``.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("examples", "benchmarks")
LINK = re.compile(r"\]\((?!https?:|#)([^)\s#]+)(#[^)\s]*)?\)")
HELP = re.compile(r"^<!-- lipguard-help ?([\w ]*) -->$", re.MULTILINE)


def _script_page(script: str) -> str:
    """The site page that shows the repository file ``script`` (``examples/x.py``)."""
    return f"source/{script.removesuffix('.py')}.md"


def on_files(files: Files, config: Any) -> Files:
    readme = (REPO / "README.md").read_text(encoding="utf-8").replace("](docs/", "](")
    files.append(File.generated(config, "index.md", content=readme))
    for folder in SCRIPTS:
        for path in sorted((REPO / folder).glob("*.py")):
            script = f"{folder}/{path.name}"
            text = path.read_text(encoding="utf-8")
            content = f"# `{script}`\n\n```python\n{text}```\n"
            files.append(File.generated(config, _script_page(script), content=content))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    here = posixpath.dirname(page.file.src_uri)

    def relink(match: re.Match[str]) -> str:
        target = posixpath.normpath(posixpath.join(here, match.group(1)))
        script = target.removeprefix("../")
        outside = target.startswith("../") and script.split("/")[0] in SCRIPTS
        if outside and (REPO / script).is_file():
            page_uri = posixpath.relpath(_script_page(script), here or ".")
            return f"]({page_uri}{match.group(2) or ''})"
        return match.group(0)

    markdown = LINK.sub(relink, markdown)
    return HELP.sub(lambda match: _help(match.group(1).split()), markdown)


def _help(verb: list[str]) -> str:
    """``lipguard VERB --help`` as a code block, rendered 80 columns wide without colour."""
    from typer.testing import CliRunner

    from lipguard.cli import app

    env = {"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        result = CliRunner().invoke(app, [*verb, "--help"], prog_name="lipguard")
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if result.exit_code != 0:
        raise RuntimeError(f"lipguard {' '.join(verb)} --help exited {result.exit_code}")
    return f"```text\n$ lipguard {' '.join([*verb, '--help'])}\n{result.output.rstrip()}\n```"
