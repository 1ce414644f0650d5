"""What `status` shows: live rich progress bars in a terminal, plain lines elsewhere.

The view keeps the history of its own readings, so the rate is a moving window over what it has
seen, with no extra state in Redis. Each refresh is one Redis round trip (see monitor.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from csvembed import defaults
from csvembed.monitor import Reading
from csvembed.progress import Snapshot


class RateMeter:
    """Rows finished per second over a short moving window of (time, finished) samples."""

    def __init__(self, window: float = defaults.RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, finished: int) -> None:
        self.samples.append((at, finished))
        while len(self.samples) > 2 and at - self.samples[1][0] >= self.window:
            self.samples.popleft()

    @property
    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def overall_rate(snapshot: Snapshot) -> float | None:
    """Rows per second between the first and the latest stored row, for one-shot readings."""
    if snapshot.started_at is None or snapshot.updated_at is None or snapshot.updated_at <= snapshot.started_at:
        return None
    return (snapshot.done + snapshot.failed) / (snapshot.updated_at - snapshot.started_at)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Line:
    """One submission's figures as shown: counts from Redis, rate and times derived here."""

    snapshot: Snapshot
    rate: float | None
    elapsed: float
    eta: float | None
    in_progress: int
    workers: int

    @property
    def work(self) -> int:
        return self.snapshot.total - self.snapshot.skipped

    def as_json(self) -> dict:
        return {**self.snapshot.as_json(), "rate": self.rate, "elapsed": self.elapsed, "eta": self.eta,
                "in_progress": self.in_progress, "workers": self.workers}


class StatusView:
    """Successive readings in, figures and renderings out."""

    def __init__(self) -> None:
        self.meters: dict[str, RateMeter] = {}

    def lines(self, reading: Reading, at: float) -> list[Line]:
        lines = []
        for snapshot in reading.snapshots:
            meter = self.meters.setdefault(snapshot.id, RateMeter())
            meter.add(at, snapshot.done + snapshot.failed)
            rate = meter.rate if meter.rate is not None else overall_rate(snapshot)
            end = snapshot.updated_at if snapshot.finished and snapshot.updated_at else at
            eta = 0.0 if snapshot.finished else (snapshot.pending / rate if rate else None)
            queue = reading.queues.get(snapshot.queue)
            in_progress = min(queue.in_progress, snapshot.pending) if queue else 0
            lines.append(Line(snapshot, rate, end - snapshot.created_at, eta, in_progress,
                              queue.workers if queue else 0))
        return lines

    def render(self, reading: Reading, at: float, failures: dict[str, list[dict]]) -> Group:
        """Progress bars, one per submission, then a line per queue and the latest failure reasons."""
        table = Table(box=None, pad_edge=False, header_style="bold")
        for name in ("submission", "progress", "done", "failed", "in progress", "pending", "rows/s", "elapsed",
                     "eta", "state"):
            table.add_column(name, justify="left" if name in ("submission", "progress", "state") else "right",
                             no_wrap=True)
        for line in self.lines(reading, at):
            snapshot = line.snapshot
            table.add_row(
                f"{snapshot.id} [dim]{snapshot.collection}[/]",
                ProgressBar(total=max(line.work, 1), completed=snapshot.done + snapshot.failed, width=24),
                f"{snapshot.done}/{line.work}",
                Text(str(snapshot.failed), style="red" if snapshot.failed else ""),
                str(line.in_progress),
                str(snapshot.pending),
                f"{line.rate:.1f}" if line.rate else "-",
                duration(line.elapsed),
                duration(line.eta),
                snapshot.state + (f", {snapshot.skipped} unchanged" if snapshot.skipped else ""),
            )
        parts: list = [table]
        for queue in reading.queues.values():
            parts.append(Text(f"queue {queue.name}: {queue.waiting} waiting, {queue.in_progress} in progress,"
                              f" {queue.workers} workers", style="dim"))
        for submission_id, recent in failures.items():
            for failure in recent:
                parts.append(Text(f"{submission_id} row {failure['row_number']} (id {failure['id']}):"
                                  f" {failure['reason']}", style="red"))
        return Group(*parts)

    def plain(self, reading: Reading, at: float) -> list[str]:
        """One line per submission for pipes and CI: no cursor codes."""
        return [
            f"{line.snapshot.id} {line.snapshot.state}: {line.snapshot.done}/{line.work} done,"
            f" {line.snapshot.failed} failed, {line.in_progress} in progress, {line.snapshot.pending} pending,"
            f" {line.snapshot.skipped} skipped, {f'{line.rate:.1f}' if line.rate else '-'} rows/s,"
            f" elapsed {duration(line.elapsed)}, eta {duration(line.eta)}, {line.workers} workers"
            for line in self.lines(reading, at)
        ]


def watch(
    read: Callable[[], Reading],
    read_failures: Callable[[str], list[dict]],
    console: Console,
    until_finished: bool = True,
) -> Reading:
    """Live bars, refreshed several times a second, until every submission shown is finished."""
    view = StatusView()

    def frame() -> tuple[Group, Reading]:
        reading = read()
        failures = {s.id: read_failures(s.id) for s in reading.snapshots if s.failed}
        return view.render(reading, time.time(), failures), reading

    rendered, reading = frame()
    with Live(rendered, console=console, auto_refresh=False) as live:
        while not (until_finished and all(s.finished for s in reading.snapshots)):
            time.sleep(1 / defaults.STATUS_REFRESH_PER_SECOND)
            rendered, reading = frame()
            live.update(rendered, refresh=True)
    return reading


def wait_plain(read: Callable[[], Reading], console: Console, every: float = 2.0) -> Reading:
    """Block until finished, printing plain lines when the numbers change (at most every few s)."""
    view, last, last_printed = StatusView(), [], 0.0
    while True:
        at = time.time()
        reading = read()
        lines = view.plain(reading, at)
        finished = all(s.finished for s in reading.snapshots)
        if finished or (lines != last and at - last_printed >= every):
            for line in lines:
                console.print(line, highlight=False, markup=False)
            last, last_printed = lines, at
        if finished:
            return reading
        time.sleep(1 / defaults.STATUS_REFRESH_PER_SECOND)
