"""The lipguard command: --version, --help and the main job on its quick setting."""

from __future__ import annotations

from typer.testing import CliRunner

import lipguard
from lipguard.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert lipguard.__version__ in result.output


def test_help_lists_run():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "run" in result.output
