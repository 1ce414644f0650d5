"""search, export and delete: using and managing what the workers stored."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, BinaryIO, Optional

import typer

from csvembed import defaults
from csvembed.cli.app import JsonOption, app, connection_of, out, print_json, say, settings_of
from csvembed.errors import InputError, NoStore, UnknownSubmission


def _parse_where(conditions: list[str]) -> dict[str, str]:
    where = {}
    for condition in conditions:
        column, sep, value = condition.partition("=")
        if not sep or not column:
            raise InputError(f"--where takes COLUMN=VALUE, not {condition!r}")
        where[column] = value
    return where


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(metavar="QUERY", help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many rows to return.", min=1)] = defaults.SEARCH_K,
    collection: Annotated[Optional[str], typer.Option(help="Only rows of this collection.")] = None,
    submission: Annotated[Optional[str], typer.Option(help="Only rows last written by this submission.")] = None,
    where: Annotated[Optional[list[str]], typer.Option(
        help="Only rows whose original column equals a value: COLUMN=VALUE (repeatable, all must hold).")] = None,
    column: Annotated[Optional[list[str]], typer.Option(
        "--column", help="Also show this original column in the table (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=(
        "Print a JSON list of {collection, submission, row_number, id, distance, text, row, match}, nearest "
        "first; match is the {start, end} of the window that matched, in characters of text."
    ))] = False,
) -> None:
    """The stored rows nearest to QUERY by cosine distance, nearest first."""
    from csvembed.search import search as run_search

    hits = run_search(settings_of(ctx), query, k, collection=collection, submission=submission,
                      where=_parse_where(where or []))
    if as_json:
        print_json([hit.__dict__ for hit in hits])
        return
    if not hits:
        say("no stored rows match")
        return
    shown = list(column or [])
    extra = {name: max(len(name), *(len(str(hit.row.get(name, ""))) for hit in hits)) for name in shown}
    id_width = max(2, *(len(hit.id) for hit in hits))
    text_width = max(out.width - id_width - sum(w + 2 for w in extra.values()) - 12, 20)
    header = f"{'distance':<8}  {'id':<{id_width}}  " + "".join(f"{n:<{w}}  " for n, w in extra.items()) + "text"
    out.print(header, style="bold", highlight=False, markup=False)
    for hit in hits:
        # The window that matched: for a long row, the part of it that the query is near.
        snippet = " ".join((hit.text[hit.match["start"]:hit.match["end"]] if hit.match else hit.text).split())
        if len(snippet) > text_width:
            snippet = snippet[: text_width - 1] + "…"
        cells = "".join(f"{str(hit.row.get(n, '')):<{w}}  " for n, w in extra.items())
        out.print(f"{hit.distance:<8.4f}  {hit.id:<{id_width}}  {cells}{snippet}", highlight=False, markup=False)


@app.command()
def export(
    ctx: typer.Context,
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="A submission id.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl, csv or parquet.")] = "jsonl",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="File to write. Default: stdout.")] = None,
    windows: Annotated[bool, typer.Option(
        "--windows", help="One record per window (window, start, end) instead of one per row.")] = False,
) -> None:
    """Write a submission's stored rows with their vectors, in row order.

    jsonl: one {collection, submission, row_number, id, text, row, vector} per line. csv: the
    original columns, then embedding_0 ... embedding_N. parquet: the original columns and an
    `embedding` list column. A row embedded in windows gets the normalised mean of its windows.
    """
    from csvembed.export import FORMATS
    from csvembed.export import export as run_export
    from csvembed.progress import SubmissionRecords
    from csvembed.store import open_existing_store

    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
    records = SubmissionRecords(connection_of(ctx))
    if not records.exists(submission_id):
        raise UnknownSubmission(f"no submission with id {submission_id!r}")
    db = settings_of(ctx).db
    store = open_existing_store(db, read_only=True)
    try:
        if store is None or store.dimension is None:
            raise NoStore(db)
        columns = records.columns(submission_id)
        count = _write(output, lambda target: run_export(store, submission_id, columns, fmt, target, windows=windows))
    finally:
        if store is not None:
            store.close()
    say(f"exported {count} {'windows' if windows else 'rows'}" + (f" to {output}" if output else ""))


def _write(path: Path | None, write: Callable[[BinaryIO], int]) -> int:
    """Run `write` on the file (stdout for None). A failed write is one line naming the file and the
    OS reason, and a file this export created is removed so no half-written export is left."""
    created = False
    try:
        if path is None:
            with open(sys.stdout.fileno(), "wb", closefd=False) as target:
                return write(target)
        try:
            target = path.open("xb")
            created = True
        except FileExistsError:  # overwrite it, or write to a device such as /dev/null
            target = path.open("wb")
        with target:
            return write(target)
    except BaseException as exc:
        if created:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno != errno.EPIPE:
            reason = exc.strerror or str(exc)
            raise InputError(f"cannot write {path or 'standard output'}: {reason[:1].lower()}{reason[1:]}") from None
        raise


@app.command()
def delete(
    ctx: typer.Context,
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="A submission id.")],
    as_json: JsonOption = False,
) -> None:
    """Remove a submission: its stored rows and vectors, its queued jobs and its records in Redis."""
    from csvembed.delete import delete_submission
    from csvembed.store import open_existing_store

    store = open_existing_store(settings_of(ctx).db)
    deleted = delete_submission(connection_of(ctx), store, submission_id)
    if store is not None:
        store.close()
    if as_json:
        print_json(deleted.__dict__)
    say(f"deleted submission {deleted.id}: {deleted.rows} stored rows and vectors, {deleted.jobs} queued or"
        " failed jobs, and its progress records")
