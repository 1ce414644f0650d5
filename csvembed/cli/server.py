"""redis status|stop: the embedded redis-server's lifecycle, found from the settings like every command."""

from __future__ import annotations

import typer

from csvembed.cli.app import CsvembedTyper, JsonOption, api_of, out, print_json, say
from csvembed.errors import EXIT_UNAVAILABLE

redis_app = CsvembedTyper(
    name="redis",
    help="The embedded Redis: csvembed starts it on demand in $CSVEMBED_HOME/redis and it keeps running "
    "(with the queued rows) until stopped here.",
    short_help="Show or stop the embedded Redis server.",
    no_args_is_help=True,
)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@redis_app.command("status", short_help="Whether the embedded Redis runs, its memory and its disk use.")
def redis_status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Whether the embedded Redis runs, its pid, memory and disk use. Never starts it.

    Exit codes: 0 running; 3 not running (the next command starts it).
    """
    found = api_of(ctx).local_redis()
    if as_json:
        print_json(found.as_json())
    elif found.pid is None:
        out.print(f"not running; data in {found.data_dir} ({_megabytes(found.disk)} on disk)",
                  highlight=False, markup=False)
    else:
        out.print(f"running: redis-server {found.version}, pid {found.pid}, socket {found.socket}; "
                  f"{_megabytes(found.used_memory)} in memory, {_megabytes(found.disk)} on disk in {found.data_dir}",
                  highlight=False, markup=False)
    if found.pid is None:
        raise typer.Exit(EXIT_UNAVAILABLE)


@redis_app.command("stop", short_help="Stop the embedded Redis; queued rows are kept on disk.")
def redis_stop(ctx: typer.Context) -> None:
    """Stop the embedded Redis. Queued rows are kept on disk; the next command starts it again.

    Running workers wait for it (and say so) until then.
    """
    api = api_of(ctx)
    pid = api.stop_local_redis()
    if pid is None:
        say("the embedded Redis is not running")
    else:
        say(f"stopped the embedded Redis (pid {pid}); its data stays in {api.settings.home / 'redis'}")
