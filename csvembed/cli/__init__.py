"""The command line: parse flags, call the library, print. Data goes to stdout, people's text to stderr.

One module per group of commands: ingest (submit, worker, failures, retry), watch (status, list,
workers) and data (search, export, delete). This module holds the app, the global settings
and the entry point that turns errors into one line and an exit code.
"""

from __future__ import annotations

import logging
import sys

import click
import redis

from csvembed.cli.app import app, err
# Imported for their commands, in the order --help lists them.
from csvembed.cli import ingest, watch, data  # noqa: E402,I001
from csvembed.errors import EXIT_BAD_INPUT, EXIT_OK, CsvembedError, ServiceUnavailable

__all__ = ["app", "main", "ingest", "watch", "data"]


def _fail(message: str, code: int) -> None:
    err.print(f"csvembed: error: {message}", highlight=False, markup=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Entry point: one-line errors and meaningful exit codes, never a traceback for bad input."""
    logging.basicConfig(level=logging.WARNING, format="csvembed: %(message)s", stream=sys.stderr)
    try:
        # Without standalone mode click returns a typer.Exit's code instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else EXIT_OK)
    except CsvembedError as exc:
        _fail(str(exc), exc.exit_code)
    except redis.ConnectionError as exc:
        _fail(f"lost the connection to Redis: {exc}", ServiceUnavailable.exit_code)
    except redis.RedisError as exc:
        _fail(f"Redis: {exc}", ServiceUnavailable.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        err.print("interrupted; queued work goes on", highlight=False)
        sys.exit(130)
