"""``python -m lipguard``: the same command as ``lipguard``."""

from lipguard.cli import app

app(prog_name="lipguard")
