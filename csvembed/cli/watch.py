"""status, list and workers: what is happening, live for people and as JSON for scripts."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from csvembed import defaults
from csvembed.cli.app import JsonOption, api_of, app, err, out, print_json
from csvembed.errors import EXIT_OK, EXIT_ROWS_FAILED, InputError, UnknownSubmission
from csvembed.submissions import INTERRUPTED, Snapshot
from csvembed.wording import count

if TYPE_CHECKING:  # the views (rich's live display and tables) and the monitor: when a command here runs
    from csvembed.api import Csvembed
    from csvembed.monitor import Reading


def _exit_code(reading: Reading) -> int:
    """1 if rows failed, or if the submit was interrupted (some rows were never enqueued)."""
    incomplete = any(snapshot.failed or snapshot.state == INTERRUPTED for snapshot in reading.snapshots)
    return EXIT_ROWS_FAILED if incomplete else EXIT_OK


def follow(api: Csvembed, submission_id: str) -> int:
    """Live bars on a terminal, plain lines otherwise, until the submission is finished; its exit code."""
    from csvembed.cli.status_view import wait_plain, watch

    api.require(submission_id)

    def read() -> Reading:
        reading = api.reading([submission_id])
        if not reading.snapshots:  # deleted while we watched
            raise UnknownSubmission(submission_id)
        return reading

    if err.is_terminal:
        reading = watch(read, api.recent_failures, err)
    else:
        reading = wait_plain(read, err)
    return _exit_code(reading)


@app.command(short_help="Show progress: done, failed, pending, rows/s and ETA.")
def status(
    ctx: typer.Context,
    submission_id: Annotated[Optional[str], typer.Argument(
        metavar="ID", help="A submission id. Without it: the recent submissions, one bar each.")] = None,
    as_json: JsonOption = False,
    wait: Annotated[bool, typer.Option(
        help="Block until nothing is pending; exit 0 if every row is done, 1 if any failed.")] = False,
    watch_view: Annotated[bool, typer.Option("--watch", help="Keep the live view open (until Ctrl-C).")] = False,
) -> None:
    """Progress: done, failed, in progress, pending, rows/s, elapsed and ETA.

    In a terminal, `status ID` shows live bars until the submission is finished (Ctrl-C leaves the
    work running). Piped, it prints one plain line per submission. --json prints one snapshot with
    id, state, total, done, failed, skipped, pending, rate, eta, in_progress and workers. Exit
    codes: 0; 1 with --wait if rows failed or the submit was interrupted; 2 for an unknown id.
    """
    if wait and submission_id is None:
        raise InputError("--wait needs a submission ID")
    api = api_of(ctx)
    # An id given empty is an unknown id, not "no id": it listed every submission.
    ids = [submission_id] if submission_id is not None else api.recent()
    if submission_id is not None:
        api.require(submission_id)
    if wait:
        code = follow(api, submission_id)
        if as_json:
            print_json(api.status(submission_id).as_json())
        raise typer.Exit(code)
    if as_json:
        print_json(api.status(submission_id).as_json() if submission_id is not None
                   else [line.as_json() for line in api.statuses(ids)])
        return
    if not err.is_terminal:
        _print_lines(api, ids)
        return
    from csvembed.cli.status_view import watch

    watch(lambda: api.reading(ids), api.recent_failures, err, until_finished=not watch_view)


def _print_lines(api: Csvembed, ids: list[str]) -> None:
    from csvembed.cli.status_view import notify_line, plain, queue_line

    reading = api.reading(ids)
    at = time.time()
    for text in plain(reading, at):
        out.print(text, highlight=False, markup=False)
    for snapshot in reading.snapshots:
        if text := notify_line(snapshot, at):
            err.print(text, highlight=False, markup=False)
    for queue in reading.queues.values():
        err.print(queue_line(queue), highlight=False, markup=False)


@app.command("list", short_help="List the submissions, newest first, with their state.")
def list_submissions(
    ctx: typer.Context,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(help="How many of the most recent submissions.", min=1,
                                       max=defaults.REDIS_MAX_INT)] = 50,
) -> None:
    """The submissions, newest first: id, file, created, total, done, failed and state."""
    api = api_of(ctx)
    snapshots = api.reading(api.recent(limit)).snapshots
    if as_json:
        print_json([{key: s.as_json()[key] for key in ("id", "collection", "file", "created_at", "total", "done",
                                                        "failed", "skipped", "pending", "state")}
                    for s in snapshots])
        return
    for text in list_lines(snapshots):
        out.print(text, highlight=False, markup=False)


def list_lines(snapshots: list[Snapshot]) -> list[str]:
    """A header, then a line per submission in aligned columns; the file last, never cut."""
    header = ("submission", "created", "state", "done", "failed", "pending", "collection", "file")
    rows = [(s.id, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created_at)), s.state,
             f"{s.done}/{s.total - s.skipped}", str(s.failed), str(s.pending), s.collection, s.file)
            for s in snapshots]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {3, 4, 5}
    return ["  ".join(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row))
            .rstrip() for row in [header, *rows]]


@app.command(short_help="List the workers: state, queues, batch size, rows done.")
def workers(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The workers: name (host.pid.suffix), state, queues, batch size, rows done, failed and retried.

    State is idle, busy, or lost: no heartbeat for 15 s (killed, or cut off from Redis); RQ forgets a
    lost worker about a minute later. Failed counts rows failed for good; retries, failed attempts that
    were tried again.
    """
    from csvembed.cli.status_view import queue_line, store_wait

    api = api_of(ctx)
    found = api.workers()
    if as_json:
        print_json([info.as_json() for info in found])
        return
    for info in found:
        waiting = f"  ({store_wait(info.waiting_since)})" if info.waiting_for else ""
        out.print(f"{info.name}  {info.state:<9} queues {','.join(info.queues)}  batch {info.batch_size}"
                  f"  {count(info.rows_done, 'row')} done, {info.rows_failed} failed,"
                  f" {count(info.retries, 'retry', 'retries')}{waiting}", highlight=False, markup=False)
    err.print(count(len(found), "worker"), highlight=False)
    for queue in api.unserved_queues():
        err.print(queue_line(queue), highlight=False, markup=False)

