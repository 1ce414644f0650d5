"""The command line: parse flags, call the library, print. Data goes to stdout, people's text to stderr.

One module per group of commands: ingest (submit, worker, failures, retry), watch (status, list,
workers), data (search, export, delete), server (redis status|stop) and web (serve). app.py holds the app, the
global settings and the group that turns errors into one line and an exit code; this module holds the console script.
"""

from __future__ import annotations

import logging
import sys

# Imported for their commands, in the order --help lists them.
from csvembed.cli import data, ingest, server, watch, web  # noqa: E402,I001
from csvembed.cli.app import PROG_NAME, app

app.add_typer(server.redis_app)

__all__ = ["app", "main", "ingest", "watch", "data", "server", "web"]


def main() -> None:
    """The console script; `python -m csvembed` too. The app exits with the code itself."""
    logging.basicConfig(level=logging.WARNING, format="csvembed: %(message)s", stream=sys.stderr)
    app(prog_name=PROG_NAME)
