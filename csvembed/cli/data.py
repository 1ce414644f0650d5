"""search, export and delete: using and managing what the workers stored."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO, Optional

import typer

from csvembed import defaults
from csvembed.cli.app import JsonOption, api_of, app, count, out, print_json, say
from csvembed.errors import InputError

if TYPE_CHECKING:  # the store imports numpy: not at start-up
    from csvembed.api import Exported
    from csvembed.store import Hit


@app.command(short_help="Find the stored rows nearest to a query.")
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(metavar="QUERY", help="What to look for.")],
    k: Annotated[int, typer.Option("-k", metavar="N", help="How many rows to return.", min=1,
                                   max=defaults.SEARCH_MAX_K)] = defaults.SEARCH_K,
    collection: Annotated[Optional[str], typer.Option(metavar="NAME", help="Only rows of this collection.")] = None,
    submission: Annotated[Optional[str], typer.Option(
        metavar="ID", help="Only rows last written by this submission.")] = None,
    where: Annotated[Optional[list[str]], typer.Option(
        metavar="COLUMN=VALUE",
        help="Only rows whose original column equals a value: COLUMN=VALUE (repeatable, all must hold).")] = None,
    column: Annotated[Optional[list[str]], typer.Option(
        "--column", metavar="COLUMN", help="Also show this original column in the table (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=(
        "Print a JSON list of {collection, submission, row_number, id, distance, text, row, match}, nearest "
        "first; match is the {start, end} of the window that matched, in characters of text."
    ))] = False,
) -> None:
    """The stored rows nearest to QUERY by cosine distance, nearest first."""
    from csvembed.search import parse_where  # numpy: not at start-up

    hits = api_of(ctx).search(query, k, collection=collection, submission=submission,
                              where=parse_where(where or []), shown=column or [])
    if as_json:
        print_json([hit.__dict__ for hit in hits])
        return
    if not hits:
        say("no stored rows match")
        return
    for number, text in enumerate(hit_lines(hits, list(column or []), out.width)):
        out.print(text, style="bold" if number == 0 else None, highlight=False, markup=False)


def hit_lines(hits: list[Hit], shown: list[str], width: int) -> list[str]:
    """A header, then a line per hit: distance, collection, id, the asked-for columns and a snippet of
    the text cut to fit `width`. The collection tells apart the same id in two collections."""
    fixed = {"collection": [hit.collection for hit in hits], "id": [hit.id for hit in hits],
             **{name: [str(hit.row.get(name, "")) for hit in hits] for name in shown}}
    widths = {name: max(len(name), *(len(value) for value in values)) for name, values in fixed.items()}
    text_width = max(width - len("distance  ") - sum(w + 2 for w in widths.values()), 20)
    found = [f"{'distance':<8}  " + "".join(f"{name:<{w}}  " for name, w in widths.items()) + "text"]
    for number, hit in enumerate(hits):
        # The window that matched: for a long row, the part of it that the query is near.
        snippet = " ".join((hit.text[hit.match["start"]:hit.match["end"]] if hit.match else hit.text).split())
        if len(snippet) > text_width:
            snippet = snippet[: text_width - 1] + "…"
        cells = "".join(f"{fixed[name][number]:<{w}}  " for name, w in widths.items())
        found.append(f"{hit.distance:<8.4f}  {cells}{snippet}")
    return found


@app.command(short_help="Write a submission's rows and vectors as JSONL, CSV or Parquet.")
def export(
    ctx: typer.Context,
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="A submission id.")],
    fmt: Annotated[str, typer.Option("--format", metavar="jsonl|csv|parquet", help="The file format.")] = "jsonl",
    output: Annotated[Optional[str], typer.Option(
        "-o", "--output", metavar="FILE", help="File to write. Default: stdout (not parquet on a terminal).")] = None,
    windows: Annotated[bool, typer.Option(
        "--windows", help="One record per window (window, start, end) instead of one per row.")] = False,
) -> None:
    """Write a submission's stored rows with their vectors, in row order.

    jsonl: one {collection, submission, row_number, id, text, row, vector} per line. csv: the
    original columns, then embedding_0 ... embedding_N. parquet: the original columns and an
    `embedding` list column (anywhere but a terminal: -o, a redirect or a pipe). A row embedded in
    windows gets the normalised mean of its windows (--windows: every window). The rows a submission
    skipped as unchanged stay stored under the earlier submission that wrote them: the closing line
    names it.
    """
    if output is not None and not output.strip():  # Path("") is ".": it read as "cannot write .: is a directory"
        raise InputError("--output (-o) must name a file, not be empty")
    if fmt == "parquet" and output is None and sys.stdout.isatty():
        raise InputError("parquet is binary: write it to a file with -o FILE, or pipe it")
    api = api_of(ctx)
    api.check_export(submission_id, fmt)
    path = Path(output) if output is not None else None
    exported = _write(path, lambda target: api.export(submission_id, fmt, target, windows=windows))
    say("; ".join([f"exported {count(exported.records, 'window' if windows else 'row')}"
                   + (f" to {output}" if output else ""), *exported.notes]))


def _write(path: Path | None, write: Callable[[BinaryIO], Exported]) -> Exported:
    """Run `write` on the file (stdout for None). A file is written beside itself under a temporary name
    (0600: an export holds what the user stored) and renamed into place once whole, so a failed export leaves
    no half-written file and an existing file as it was; a device such as /dev/null is written directly. A
    failed write is one line naming the file and the OS reason."""
    temporary: Path | None = None
    try:
        if path is None:
            with open(sys.stdout.fileno(), "wb", closefd=False) as target:
                return write(target)
        if path.exists() and not path.resolve().is_file():  # a device or a pipe: nothing to rename onto
            with path.open("wb") as target:
                return write(target)
        final = path.resolve() if path.is_symlink() else path  # the file a link names is replaced, not the link
        if final.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        descriptor, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        temporary = Path(name)
        with open(descriptor, "wb") as target:
            exported = write(target)
        os.replace(temporary, final)
        temporary = None
        return exported
    except BaseException as exc:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno != errno.EPIPE:
            reason = exc.strerror or str(exc)
            raise InputError(f"cannot write {path or 'standard output'}: {reason[:1].lower()}{reason[1:]}") from None
        raise


@app.command(short_help="Remove a submission or a collection: stored rows, jobs, records.")
def delete(
    ctx: typer.Context,
    submission_id: Annotated[Optional[str], typer.Argument(metavar="ID", help="A submission id.")] = None,
    collection: Annotated[Optional[str], typer.Option(
        metavar="NAME", help="Instead of ID: every row of this collection, and its submissions.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a submission: its stored rows and vectors, its queued jobs and its records in Redis.

    --collection NAME removes a whole collection from the store, with its submissions in Redis, and rows
    whose submission records are gone too.
    """
    if (submission_id is None) == (collection is None):
        raise InputError("give either a submission ID or --collection NAME")
    if collection is not None:
        gone = api_of(ctx).delete_collection(collection)
        if as_json:
            print_json(gone.__dict__)
        say(f"deleted collection {collection}: {count(gone.rows, 'stored row')} and their vectors,"
            f" {count(len(gone.submissions), 'submission')}")
        return
    deleted = api_of(ctx).delete(submission_id)
    if as_json:
        print_json(deleted.__dict__)
    say(f"deleted submission {deleted.id}: {count(deleted.rows, 'stored row')} and their vectors,"
        f" {count(deleted.jobs, 'queued or failed job')}, and its progress records")
