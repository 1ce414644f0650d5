"""submit, worker, failures and retry: getting rows in, and getting failed rows in again."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

from csvembed import defaults
from csvembed.cli.app import api_of, app, count, err, on_interrupt, out, print_json, say
from csvembed.errors import InputError


@app.command(short_help="Queue one embedding job per CSV row; print the submission id.")
def submit(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(metavar="FILE", help="The CSV file, or - for standard input.")],
    text_column: Annotated[Optional[list[str]], typer.Option(
        "--text-column", metavar="COLUMN", help="Column to embed (repeatable; joined by newlines). Without "
        "--text-column or --template, every column is embedded as 'name: value' lines.")] = None,
    template: Annotated[Optional[str], typer.Option(
        metavar="TEXT", help="Text to embed, e.g. '{title}: {body}'.")] = None,
    id_column: Annotated[Optional[str], typer.Option(
        metavar="COLUMN", help="Column holding each row's own key. Default: the row number. A row with an id "
        "already in the collection replaces it; within one file the later row with an id wins.")] = None,
    delimiter: Annotated[Optional[str], typer.Option(metavar="CHAR", help="Field delimiter. Default: sniffed.")] = None,
    encoding: Annotated[Optional[str], typer.Option(
        metavar="NAME",
        help="Text encoding. Default: UTF-8, or what a byte-order mark says (UTF-8-BOM, UTF-16, UTF-32).")] = None,
    collection: Annotated[Optional[str], typer.Option(
        metavar="NAME", help="The dataset the rows belong to. Default: the file's stem (data for data.csv.gz), or "
        "stdin-ID for standard input.")] = None,
    queue: Annotated[str, typer.Option(metavar="NAME", help="The RQ queue to put the rows on. A model other "
        "than the default gets its own queue, NAME@model-hash, which its workers listen on.")] = defaults.QUEUE_NAME,
    force: Annotated[bool, typer.Option(
        "--force", help="Re-embed rows even if they are unchanged in the store.")] = False,
    max_pending: Annotated[Optional[int], typer.Option(
        help="Pause reading while this many rows wait in the queue.", min=1)] = None,
    long_text: Annotated[str, typer.Option(
        metavar="window|truncate|fail",
        help="Text longer than the model's window (all-MiniLM-L6-v2: 256 tokens, about 1,200 characters): "
        "window (embed all of it in overlapping windows), truncate (embed its first window) or fail.")] = "window",
    window_overlap: Annotated[int, typer.Option(
        help="Tokens each window shares with the previous one (at most half a window).", min=0)] = 32,
    notify: Annotated[Optional[str], typer.Option(
        metavar="URL", help="Once nothing is pending, POST the final status JSON to this http:// or https:// URL "
        "(signed when the workers have CSVEMBED_WEBHOOK_SECRET).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print {id, rows, enqueued, skipped, failed, queue, collection} as JSON.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Then show the live status until every row is done.")] = False,
) -> None:
    """Enqueue one job per CSV row; print the submission id on stdout and return at once.

    Rows whose id, text, fields and model are unchanged in the store are skipped (see --force).
    A row with more fields than the header rejects the file; missing trailing fields read as "".
    """
    # Until the producer returns, it takes back what it enqueued when it is interrupted.
    on_interrupt(ctx, f"interrupted: nothing of {'standard input' if file == '-' else file} was submitted"
                 " (rows already queued were taken back)")
    from csvembed.cli.reading import ReadProgress
    from csvembed.producer import SubmitOptions
    from csvembed.reader import open_source

    if not file:  # read as the current folder: ": is a directory, not a CSV file"
        raise InputError("FILE must name a CSV file, or - for standard input, not be empty")
    api = api_of(ctx)
    options = SubmitOptions(
        text_columns=tuple(text_column or ()), template=template, id_column=id_column, delimiter=delimiter,
        encoding=encoding, collection=collection, queue=queue, force=force, max_pending=max_pending,
        long_text=long_text, window_overlap=window_overlap, notify=notify,
    )
    if note := api.row_encoding_note():  # a user's own Redis would keep every queued row in the large encoding
        say(note)
    source = open_source(file)
    with ReadProgress(err, source) as reading:

        def created(submission_id: str) -> None:
            # The id comes first, before any --max-pending wait; --json prints everything at the end.
            if not as_json:
                print(submission_id, flush=True)
            reading.start()

        result = api.submit(source, options, on_created=created, on_read=reading.update)
    on_interrupt(ctx, f"stopped watching; submission {result.id} goes on: its rows stay queued for the workers"
                 f" (csvembed status {result.id})")
    if as_json:
        print_json(result.as_json())
    skipped = f", {result.skipped} unchanged and skipped" if result.skipped else ""
    failed = f", {result.failed} failed at once: csvembed failures {result.id}" if result.failed else ""
    say(f"submitted {count(result.total, 'row')} of {source.name} to queue {result.queue} as {result.id}"
        f" (collection {result.collection}{skipped}{failed})")
    if wait:
        from csvembed.cli.watch import follow

        raise typer.Exit(follow(api, result.id))


@app.command(short_help="Embed queued rows and store them.")
def worker(
    ctx: typer.Context,
    burst: Annotated[bool, typer.Option("--burst", help="Exit when the queues are empty.")] = False,
    queue: Annotated[Optional[list[str]], typer.Option(
        "--queue", metavar="NAME", help="Queue to take rows from (repeatable; earlier queues have priority). It "
        "takes only rows submitted for its own --model: NAME@model-hash for a model other than the default.")] = None,
    batch_size: Annotated[int, typer.Option(
        help="Rows taken at once and embedded in one model call.", min=1,
        max=defaults.MAX_BATCH_SIZE)] = defaults.BATCH_SIZE,
    device: Annotated[str, typer.Option(
        metavar="auto|cpu|cuda", envvar="CSVEMBED_DEVICE",
        help="auto (a GPU when one is present), cpu or cuda.")] = "auto",
    backend: Annotated[str, typer.Option(
        metavar="auto|torch|onnx", envvar="CSVEMBED_BACKEND", show_envvar=True,
        help="auto (ONNX Runtime on the CPU, PyTorch on a GPU), torch or onnx. ONNX Runtime gives the same "
        "vectors, checked against PyTorch on first use, and falls back to PyTorch when it cannot.")] = "auto",
) -> None:
    """Embed queued rows and store them. Loads the model once, then runs until stopped.

    Start more workers (on this or other machines) to go faster. SIGTERM or Ctrl-C finishes the
    current batch and exits 0. If Redis goes away, the worker waits for it and says so.
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("csvembed").setLevel(logging.INFO)
    api_of(ctx).work(queue or [defaults.QUEUE_NAME], burst=burst, batch_size=batch_size, device=device,
                     backend=backend)


@app.command(short_help="List the rows of a submission that failed for good, and why.")
def failures(
    ctx: typer.Context,
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="A submission id.")],
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON list of {row_number, id, reason, permanent}.")] = False,
) -> None:
    """The rows of a submission that failed for good, with their reasons.

    A permanent failure is the row's own fault (e.g. empty text): `retry` leaves it unless given --all.
    """
    rows = api_of(ctx).failures(submission_id)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        out.print(f"row {row['row_number']}\tid {row['id']}\t{row['reason']}", highlight=False, markup=False)
    say(f"{count(len(rows), 'failed row')}")


@app.command(short_help="Requeue a submission's failed rows that may yet succeed.")
def retry(
    ctx: typer.Context,
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="A submission id.")],
    every: Annotated[bool, typer.Option(
        "--all", help="Requeue the permanent failures too (e.g. empty text), which fail again as they are.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print {requeued, expired, skipped} row numbers as JSON.")] = False,
) -> None:
    """Put a submission's failed rows back in the queue, each with a fresh retry budget.

    Rows that failed for good because of their own content (permanent failures, see `failures`)
    are skipped unless --all is given.
    """
    result = api_of(ctx).retry(submission_id, include_permanent=every)
    if as_json:
        print_json(result.__dict__)
    expired = f"; {len(result.expired)} had expired and need a new submit" if result.expired else ""
    skipped = (f"; skipped {len(result.skipped)} that failed permanently (--all requeues them too)"
               if result.skipped else "")
    say(f"requeued {count(len(result.requeued), 'failed row')}{expired}{skipped}")
