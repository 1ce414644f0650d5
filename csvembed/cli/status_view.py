"""What `status` shows: live rich progress bars in a terminal, plain lines elsewhere.

The figures come from figures.py, so every face shows the same rate and ETA at the same moment;
each refresh is two Redis round trips (see monitor.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from csvembed import defaults
from csvembed.figures import Line, lines
from csvembed.monitor import QueueStats, Reading
from csvembed.submissions import Snapshot
from csvembed.wording import count

# The bar gives way first, down to MIN_BAR; then columns go, least useful first; a number is never cut.
MIN_BAR, MAX_BAR = 10, 40
DROP_ORDER = ("in progress", "pending", "unchanged", "elapsed", "collection")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def rows_per_second(rate: float | None) -> str:
    return f"{rate:.1f}" if rate else "-"


def unserved_text(model: str) -> str:
    return f"waiting: no live worker for model {model}"


def queue_line(queue: QueueStats) -> str:
    unserved = f", {unserved_text(', '.join(queue.models))}" if queue.unserved and queue.models else ""
    line = (f"queue {queue.name}: {queue.waiting} waiting, {queue.in_progress} in progress,"
            f" {count(queue.workers, 'worker')}{unserved}")
    if queue.waiting_for_store:
        line += f"; {count(queue.waiting_for_store, 'worker')} {store_wait(queue.store_waiting_since)}"
    return line


def store_wait(since: float | None) -> str:
    """"waiting for the store since 12:03:04" (local time)."""
    return "waiting for the store" + (f" since {time.strftime('%H:%M:%S', time.localtime(since))}" if since else "")


def _cells(line: Line) -> dict[str, str]:
    """A submission's table cells by column, bar aside; "collection" is shown after the id."""
    snapshot = line.snapshot
    return {
        "submission": snapshot.id, "collection": snapshot.collection, "done": f"{snapshot.done}/{line.work}",
        "failed": str(snapshot.failed), "in progress": str(line.in_progress), "pending": str(snapshot.pending),
        "unchanged": str(snapshot.skipped), "rows/s": rows_per_second(line.rate), "elapsed": duration(line.elapsed),
        "eta": duration(line.eta), "state": snapshot.state,
    }


def _table(shown: list[Line], width: int) -> Table:
    """The bars table at `width` columns: the bar shrinks first, then columns go in DROP_ORDER."""
    cells = [_cells(line) for line in shown]
    columns = ["submission", "collection", "done", "failed", "in progress", "pending", "unchanged", "rows/s",
               "elapsed", "eta", "state"]
    if not any(line.snapshot.skipped for line in shown):
        columns.remove("unchanged")

    def widths() -> dict[str, int]:
        found = {name: max([len(name), *(len(row[name]) for row in cells)]) for name in columns}
        if "collection" in found:  # shares the submission column: "id collection"
            found["submission"] = max([len("submission"), *(len(row["submission"]) + 1 + len(row["collection"])
                                                             for row in cells)])
            del found["collection"]
        return found

    def room() -> int:  # what is left for the bar, each column with two spaces before the next
        return width - sum(widths().values()) - 2 * len(widths())

    for name in DROP_ORDER:
        if room() >= MIN_BAR:
            break
        if name in columns:
            columns.remove(name)
    bar = min(room(), MAX_BAR) if room() >= MIN_BAR else None  # too narrow even so: done/total says it
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in widths():
        table.add_column(name, justify="left" if name in ("submission", "state") else "right", no_wrap=True)
        if name == "submission" and bar:
            table.add_column("progress", no_wrap=True, width=bar)
    for line, row in zip(shown, cells):
        values: list = []
        for name in widths():
            if name == "submission":
                values.append(f"{row['submission']} [dim]{row['collection']}[/]" if "collection" in columns
                              else row["submission"])
                if bar:
                    values.append(ProgressBar(total=max(line.work, 1),
                                              completed=line.snapshot.done + line.snapshot.failed, width=bar))
            elif name == "failed":
                values.append(Text(row["failed"], style="red" if line.snapshot.failed else ""))
            else:
                values.append(row[name])
        table.add_row(*values)
    return table


def long_text_line(snapshot: Snapshot) -> str | None:
    """How a submission's long rows were read, once any was windowed or cut off; None otherwise."""
    if not snapshot.rows_windowed and not snapshot.rows_truncated:
        return None
    return (f"{snapshot.id} long text: {count(snapshot.rows_windowed, 'row')} in {count(snapshot.windows, 'window')},"
            f" {snapshot.rows_truncated} truncated, {snapshot.rows_whole} whole")


def notify_line(snapshot: Snapshot, at: float) -> str | None:
    """Where the submission's webhook stands, in one line; None without --notify."""
    if snapshot.notify is None:
        return None
    tries = count(snapshot.notify_attempts, "time")
    if snapshot.notify_state == "delivered" and snapshot.notified_at is not None:
        sent = time.strftime('%H:%M:%S', time.localtime(snapshot.notified_at))
        return f"{snapshot.id} notified {snapshot.notify} at {sent}"
    if snapshot.notify_state == "given_up":
        return f"{snapshot.id} notify failed {tries}, gave up: {snapshot.notify_error}"
    if snapshot.notify_state == "due" and snapshot.notify_error:
        wait = max((snapshot.notify_next_at or at) - at, 0)
        return f"{snapshot.id} notify failed {tries}: {snapshot.notify_error}; next try in {wait:.0f} s"
    if snapshot.notify_state == "due":
        return f"{snapshot.id} notifying {snapshot.notify}"
    return f"{snapshot.id} will notify {snapshot.notify} when finished"


def render(reading: Reading, at: float, failures: dict[str, list[dict]], width: int) -> Group:
    """Progress bars, one per submission, then a line per queue, how long rows were read, and the
    latest failure reasons."""
    shown = lines(reading, at)
    parts: list = [_table(shown, width)]
    parts += [Text(queue_line(queue), style="dim") for queue in reading.queues.values()]
    parts += [Text(f"{line.snapshot.id} {unserved_text(line.no_worker_for_model)}", style="yellow")
              for line in shown if line.no_worker_for_model]
    parts += [Text(text, style="dim") for snapshot in reading.snapshots if (text := long_text_line(snapshot))]
    parts += [Text(text, style="dim") for snapshot in reading.snapshots if (text := notify_line(snapshot, at))]
    for submission_id, recent in failures.items():
        for failure in recent:
            parts.append(Text(f"{submission_id} row {failure['row_number']} (id {failure['id']}):"
                              f" {failure['reason']}", style="red"))
    return Group(*parts)


def plain(reading: Reading, at: float) -> list[str]:
    """One line per submission for pipes and CI: no cursor codes."""
    return [
        f"{line.snapshot.id} {line.snapshot.state}: {line.snapshot.done}/{line.work} done,"
        f" {line.snapshot.failed} failed, {line.in_progress} in progress, {line.snapshot.pending} pending,"
        f" {line.snapshot.skipped} skipped, {rows_per_second(line.rate)} rows/s,"
        f" elapsed {duration(line.elapsed)}, eta {duration(line.eta)}, {count(line.workers, 'worker')}"
        + (f", {unserved_text(line.no_worker_for_model)}" if line.no_worker_for_model else "")
        for line in lines(reading, at)
    ]


def watch(
    read: Callable[[], Reading],
    read_failures: Callable[[str], list[dict]],
    console: Console,
    until_finished: bool = True,
) -> Reading:
    """Live bars, refreshed several times a second, until every submission shown is finished."""
    def frame() -> tuple[Group, Reading]:
        reading = read()
        failures = {s.id: read_failures(s.id) for s in reading.snapshots if s.failed}
        return render(reading, time.time(), failures, console.width), reading

    rendered, reading = frame()
    with Live(rendered, console=console, auto_refresh=False) as live:
        while not (until_finished and all(s.finished for s in reading.snapshots)):
            time.sleep(1 / defaults.STATUS_REFRESH_PER_SECOND)
            rendered, reading = frame()
            live.update(rendered, refresh=True)
    return reading


def wait_plain(read: Callable[[], Reading], console: Console, every: float = 2.0) -> Reading:
    """Block until finished, printing plain lines when the numbers change (at most every few s)."""
    last, last_printed = [], 0.0
    while True:
        at = time.time()
        reading = read()
        shown = plain(reading, at)
        finished = all(s.finished for s in reading.snapshots)
        if finished or (shown != last and at - last_printed >= every):
            for line in shown:
                console.print(line, highlight=False, markup=False)
            last, last_printed = shown, at
        if finished:
            return reading
        time.sleep(1 / defaults.STATUS_REFRESH_PER_SECOND)
