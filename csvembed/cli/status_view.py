"""What `status` shows: live rich progress bars in a terminal, plain lines elsewhere.

Every figure comes from the reading alone (Redis), so the live view, the plain line and --json show
the same rate and ETA at the same moment. Each refresh is one Redis round trip (see monitor.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from csvembed import defaults
from csvembed.monitor import QueueStats, Reading
from csvembed.submissions import Snapshot
from csvembed.wording import count

# The bar gives way first, down to MIN_BAR; then columns go, least useful first; a number is never cut.
MIN_BAR, MAX_BAR = 10, 40
DROP_ORDER = ("in progress", "pending", "unchanged", "elapsed", "collection")


def rate_of(snapshot: Snapshot) -> float | None:
    """Rows finished per second, measured only between moments when rows finished.

    Rows finish a batch at a time, so a rate taken at an arbitrary moment swings with the batch
    length. Running: from the latest such moment back to the latest one at least
    RATE_WINDOW_SECONDS before it (else to the first batch's start), so it spans whole batches
    and holds steady between them. Finished: the average from the first batch's start to the end.
    """
    if snapshot.started_at is None:
        return None
    if snapshot.finished:
        start, end, finished = snapshot.started_at, snapshot.updated_at, snapshot.done + snapshot.failed
        return finished / (end - start) if end is not None and end > start else None
    samples = [(snapshot.started_at, 0), *snapshot.samples]
    last_at, last_finished = samples[-1]
    base_at, base_finished = max((sample for sample in samples if sample[0] <= last_at - defaults.RATE_WINDOW_SECONDS),
                                 default=samples[0])
    if last_at <= base_at or last_finished <= base_finished:
        return None
    return (last_finished - base_finished) / (last_at - base_at)


def eta_of(snapshot: Snapshot, rate: float | None, at: float) -> float | None:
    """Seconds to go: the pending rows at `rate` from the latest moment rows finished, counting down
    from there (not blank between batches); 0 once finished, None until a first batch finished."""
    if snapshot.finished:
        return 0.0
    if not rate or not snapshot.samples:
        return None
    return max(snapshot.samples[-1][0] + snapshot.pending / rate - at, 0.0)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def rows_per_second(rate: float | None) -> str:
    return f"{rate:.1f}" if rate else "-"


@dataclass
class Line:
    """One submission's figures as shown: counts from Redis, rate and times derived from them."""

    snapshot: Snapshot
    rate: float | None
    elapsed: float
    eta: float | None
    in_progress: int
    workers: int
    waiting_for_store: int = 0
    store_waiting_since: float | None = None

    @property
    def work(self) -> int:
        return self.snapshot.total - self.snapshot.skipped

    def as_json(self) -> dict:
        return {**self.snapshot.as_json(), "rate": self.rate, "elapsed": self.elapsed, "eta": self.eta,
                "in_progress": self.in_progress, "workers": self.workers, "waiting_for_store": self.waiting_for_store,
                "store_waiting_since": self.store_waiting_since}


def lines(reading: Reading, at: float) -> list[Line]:
    """The figures of every submission in the reading, as of `at`."""
    found = []
    for snapshot in reading.snapshots:
        rate = rate_of(snapshot)
        end = snapshot.updated_at if snapshot.finished and snapshot.updated_at else at
        queue = reading.queues.get(snapshot.queue)
        in_progress = min(queue.in_progress, snapshot.pending) if queue else 0
        found.append(Line(snapshot, rate, end - snapshot.created_at, eta_of(snapshot, rate, at), in_progress,
                          queue.workers if queue else 0, queue.waiting_for_store if queue else 0,
                          queue.store_waiting_since if queue else None))
    return found


def queue_line(queue: QueueStats) -> str:
    line = (f"queue {queue.name}: {queue.waiting} waiting, {queue.in_progress} in progress,"
            f" {count(queue.workers, 'worker')}")
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


def render(reading: Reading, at: float, failures: dict[str, list[dict]], width: int) -> Group:
    """Progress bars, one per submission, then a line per queue, how long rows were read, and the
    latest failure reasons."""
    parts: list = [_table(lines(reading, at), width)]
    parts += [Text(queue_line(queue), style="dim") for queue in reading.queues.values()]
    parts += [Text(text, style="dim") for snapshot in reading.snapshots if (text := long_text_line(snapshot))]
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
