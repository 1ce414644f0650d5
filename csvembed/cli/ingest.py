"""submit, worker, failures and retry: getting rows in, and getting failed rows in again."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

from csvembed import defaults
from csvembed.cli.app import app, connection_of, out, print_json, say, settings_of
from csvembed.errors import UnknownSubmission


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
        "collection replaces it; within one file the later row with an id wins.")] = None,
    delimiter: Annotated[Optional[str], typer.Option(help="Field delimiter. Default: sniffed.")] = None,
    encoding: Annotated[Optional[str], typer.Option(
        help="Text encoding. Default: UTF-8, or what a byte-order mark says (UTF-8-BOM, UTF-16).")] = None,
    collection: Annotated[Optional[str], typer.Option(
        help="The dataset the rows belong to. Default: the file's stem, or 'stdin'.")] = None,
    queue: Annotated[str, typer.Option(help="The RQ queue to put the rows on.")] = defaults.QUEUE_NAME,
    force: Annotated[bool, typer.Option(help="Re-embed rows even if they are unchanged in the store.")] = False,
    max_pending: Annotated[Optional[int], typer.Option(
        help="Pause reading while this many rows wait in the queue.", min=1)] = None,
    long_text: Annotated[str, typer.Option(
        help="Text longer than the model's window (all-MiniLM-L6-v2: 256 tokens, about 1,200 characters): "
        "window (embed all of it in overlapping windows), truncate (embed its first window) or fail.")] = "window",
    window_overlap: Annotated[int, typer.Option(
        help="Tokens each window shares with the previous one (at most half a window).", min=0)] = 32,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print {id, rows, enqueued, skipped, queue, collection} as JSON.")] = False,
    wait: Annotated[bool, typer.Option(help="Then show the live status until every row is done.")] = False,
) -> None:
    """Enqueue one job per CSV row; print the submission id on stdout and return at once.

    Rows whose id, text, fields and model are unchanged in the store are skipped (see --force).
    A row with more fields than the header rejects the file; missing trailing fields read as "".
    """
    from csvembed.producer import Producer, SubmitOptions
    from csvembed.reader import open_source

    settings = settings_of(ctx)
    options = SubmitOptions(
        text_columns=tuple(text_column or ()), template=template, id_column=id_column, delimiter=delimiter,
        encoding=encoding, collection=collection, queue=queue, force=force, max_pending=max_pending,
        long_text=long_text, window_overlap=window_overlap,
    )
    connection = connection_of(ctx)
    source = open_source(file)
    result = Producer(connection, settings.db, settings.model_id).submit(source, options)
    if as_json:
        print_json(result.as_json())
    else:
        print(result.id)
    skipped = f", {result.skipped} unchanged and skipped" if result.skipped else ""
    say(f"submitted {result.total} rows of {source.name} to queue {result.queue} as {result.id}"
        f" (collection {result.collection}{skipped})")
    if wait:
        from csvembed.cli.watch import follow

        raise typer.Exit(follow(connection, result.id))


@app.command()
def worker(
    ctx: typer.Context,
    burst: Annotated[bool, typer.Option(help="Exit when the queues are empty.")] = False,
    queue: Annotated[Optional[list[str]], typer.Option(
        "--queue", help="Queue to take rows from (repeatable; earlier queues have priority).")] = None,
    batch_size: Annotated[int, typer.Option(
        help="Rows taken at once and embedded in one model call.", min=1)] = defaults.BATCH_SIZE,
    device: Annotated[str, typer.Option(
        envvar="CSVEMBED_DEVICE", help="auto (a GPU when one is present), cpu or cuda.")] = "auto",
    backend: Annotated[str, typer.Option(
        envvar="CSVEMBED_BACKEND", show_envvar=True,
        help="auto (ONNX Runtime on the CPU, PyTorch on a GPU), torch or onnx. ONNX Runtime gives the same "
        "vectors, checked against PyTorch on first use, and falls back to PyTorch when it cannot.")] = "auto",
) -> None:
    """Embed queued rows and store them. Loads the model once, then runs until stopped.

    Start more workers (on this or other machines) to go faster. SIGTERM or Ctrl-C finishes the
    current batch and exits 0. If Redis goes away, the worker waits for it and says so.
    """
    from csvembed.worker import run_worker

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("csvembed").setLevel(logging.INFO)
    run_worker(settings_of(ctx), queue or [defaults.QUEUE_NAME], burst=burst, batch_size=batch_size,
               device=device, backend=backend)


@app.command()
def failures(
    ctx: typer.Context,
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="A submission id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of {row_number, id, reason}.")] = False,
) -> None:
    """The rows of a submission that failed for good, with their reasons."""
    from csvembed.progress import SubmissionRecords

    records = SubmissionRecords(connection_of(ctx))
    if not records.exists(submission_id):
        raise UnknownSubmission(f"no submission with id {submission_id!r}")
    rows = records.failures(submission_id)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        out.print(f"row {row['row_number']}\tid {row['id']}\t{row['reason']}", highlight=False, markup=False)
    say(f"{len(rows)} failed rows")


@app.command()
def retry(
    ctx: typer.Context,
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="A submission id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print {requeued, expired} row numbers as JSON.")] = False,
) -> None:
    """Put a submission's failed rows back in the queue (each with a fresh retry budget)."""
    from csvembed.retry import retry_failed

    result = retry_failed(connection_of(ctx), submission_id)
    if as_json:
        print_json(result.__dict__)
    expired = f"; {len(result.expired)} had expired and need a new submit" if result.expired else ""
    say(f"requeued {len(result.requeued)} failed rows{expired}")
