"""The lipguard command: --version, --help and the main job on its quick setting."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("verb", [["attack"], ["smooth", "certify"]])
def test_every_budget_verb_spells_it_eps(verb):
    result = runner.invoke(app, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "--eps " in result.output
    assert "--epsilon" not in result.output  # the old spelling still works, hidden


@pytest.mark.parametrize("verb", [["attack"], ["smooth", "certify"]])
def test_a_bad_budget_is_one_line_under_either_spelling(verb, tmp_path):
    for spelling in ("--eps", "--epsilon"):
        result = runner.invoke(app, [*verb, str(tmp_path / "m.json"), spelling, "nan"])
        assert result.exit_code == 2, result.output
        lines = result.output.splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith("error:"), result.output
        assert "'--eps'" in lines[0], result.output


def test_an_error_message_keeps_its_square_brackets(capsys):
    from lipguard.cli._io import _print_error

    _print_error("pip install 'lipguard[envs]'")
    assert "lipguard[envs]" in capsys.readouterr().err
