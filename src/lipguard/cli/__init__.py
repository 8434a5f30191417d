"""The ``lipguard`` command: :data:`app` and its verbs, one module each.

- ``certify``, ``verify``: :mod:`lipguard.cli.certify`
- ``attack``: :mod:`lipguard.cli.attack`
- ``smooth certify``: :mod:`lipguard.cli.smooth`
- ``monitor``: :mod:`lipguard.cli.monitor`
- ``audit verify | checkpoint | report``: :mod:`lipguard.cli.audit`
- ``run``: :mod:`lipguard.cli.run`

What they share (loaders, parsers, the one-line error exit) is in :mod:`lipguard.cli._io`.
"""

from __future__ import annotations

from typing import Annotated

import typer

import lipguard
from lipguard.cli import attack, audit, certify, monitor, smooth
from lipguard.cli._io import Command, OneLineErrors, console
from lipguard.cli.run import run_command

__all__ = ["app"]

#: the ``lipguard`` command (a Typer application; the console script calls it)
app = typer.Typer(
    cls=OneLineErrors,
    help="lipguard: smooth, provable reward and value models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"lipguard {lipguard.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """lipguard: smooth, provable reward and value models."""


app.command("run", cls=Command)(run_command)
app.command("certify", cls=Command)(certify.certify_command)
app.command("verify", cls=Command)(certify.verify_command)
app.command("attack", cls=Command)(attack.attack_command)

smooth_app = typer.Typer(help="Randomized smoothing: certified radii and output bounds.")
smooth_app.command("certify", cls=Command)(smooth.certify_command)
app.add_typer(smooth_app, name="smooth")

app.command("monitor", cls=Command)(monitor.monitor_command)

audit_app = typer.Typer(help="Verify and summarise a tamper-evident audit store.")
audit_app.command("verify", cls=Command)(audit.verify_command)
audit_app.command("checkpoint", cls=Command)(audit.checkpoint_command)
audit_app.command("report", cls=Command)(audit.report_command)
app.add_typer(audit_app, name="audit")
