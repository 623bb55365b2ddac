"""``python -m hebmctl``: the same command-line interface as the ``hebmctl`` script."""

from hebmctl.cli import app

app(prog_name="hebmctl")
