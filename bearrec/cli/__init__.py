"""The `bearrec` command line: a thin layer over the library. ``app`` is the typer app, ``main`` the installed
command; the commands register themselves on import, one module per group."""

# importing a group registers its commands; this order is the order of `bearrec --help`
from bearrec.cli import data  # noqa: F401, I001
from bearrec.cli import train  # noqa: F401
from bearrec.cli import evaluate  # noqa: F401
from bearrec.cli import serve  # noqa: F401
from bearrec.cli import experiments  # noqa: F401
from bearrec.cli import sids  # noqa: F401
from bearrec.cli.app import app, main

__all__ = ["app", "main"]
