"""The command line: parse flags, call the library, print. Data goes to stdout, people's text to stderr.

One module per group of commands: ingest (submit, worker, failures, retry), watch (status, list,
workers), data (search, export, delete), server (redis status|stop), db (db init) and web (serve).
app.py holds the app, the global settings and the group that turns errors into one line and an exit
code; this module holds the console script.
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

from csvembed.errors import EXIT_INTERRUPTED


def _interrupted_while_starting() -> NoReturn:
    """A Ctrl-C right after Enter lands in the imports (typer, rich, redis) or in typer's building of the
    commands, about 0.3 s outside the app's own handling: one line and 130, not a KeyboardInterrupt traceback."""
    sys.stderr.write("interrupted while starting: nothing was done\n")
    raise SystemExit(EXIT_INTERRUPTED) from None


try:
    # Imported for their commands, in the order --help lists them.
    from csvembed.cli import data, db, ingest, server, watch, web  # noqa: I001
    from csvembed.cli.app import PROG_NAME, app
except KeyboardInterrupt:
    _interrupted_while_starting()

app.add_typer(server.redis_app)
app.add_typer(db.db_app)

__all__ = ["app", "main", "ingest", "watch", "data", "server", "db", "web"]


def main() -> None:
    """The console script; `python -m csvembed` too. The app exits with the code itself."""
    logging.basicConfig(level=logging.WARNING, format="csvembed: %(message)s", stream=sys.stderr)
    try:
        app(prog_name=PROG_NAME)
    except KeyboardInterrupt:  # a command's own interrupt is handled inside the app (CsvembedGroup.invoke)
        _interrupted_while_starting()
