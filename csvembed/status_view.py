"""What `status` shows: live rich progress bars in a terminal, plain lines elsewhere.

Each refresh costs one Redis round trip per submission (a hash and two BITCOUNTs). The rate is
a moving window over the refreshes this view itself has seen, so it needs no extra state.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from csvembed import defaults
from csvembed.progress import Snapshot


class RateMeter:
    """Rows finished per second over a short moving window of (time, finished) samples."""

    def __init__(self, window: float = defaults.RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, finished: int) -> None:
        self.samples.append((at, finished))
        while len(self.samples) > 2 and at - self.samples[0][0] > self.window:
            self.samples.popleft()

    @property
    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def overall_rate(snapshot: Snapshot) -> float | None:
    """Rows per second since the first row was stored, for one-shot readings."""
    if snapshot.started_at is None or snapshot.updated_at is None or snapshot.updated_at <= snapshot.started_at:
        return None
    return (snapshot.done + snapshot.failed) / (snapshot.updated_at - snapshot.started_at)


def figures(snapshot: Snapshot, rate: float | None, at: float) -> dict:
    """The derived numbers shown for a submission: rate, elapsed and ETA."""
    elapsed_from = snapshot.created_at
    elapsed = (snapshot.updated_at if snapshot.finished and snapshot.updated_at else at) - elapsed_from
    eta = snapshot.pending / rate if rate and snapshot.pending else (0.0 if snapshot.finished else None)
    return {"rate": rate, "elapsed": elapsed, "eta": eta}


def plain_line(snapshot: Snapshot, rate: float | None, at: float) -> str:
    """One line for pipes and CI: no cursor codes."""
    shown = figures(snapshot, rate, at)
    rate_text = f"{shown['rate']:.1f} rows/s" if shown["rate"] else "- rows/s"
    return (
        f"{snapshot.id} {snapshot.state}: {snapshot.done}/{snapshot.total - snapshot.skipped} done,"
        f" {snapshot.failed} failed, {snapshot.pending} pending, {snapshot.skipped} skipped,"
        f" {rate_text}, elapsed {_duration(shown['elapsed'])}, eta {_duration(shown['eta'])}"
    )


def render(snapshots: list[tuple[Snapshot, float | None]], at: float, failures: dict[str, list[dict]]) -> Group:
    """Progress bars, one per submission, with counts, rate, elapsed and ETA."""
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for name, justify in (("submission", "left"), ("", "left"), ("done", "right"), ("failed", "right"),
                          ("pending", "right"), ("rows/s", "right"), ("elapsed", "right"), ("eta", "right"),
                          ("state", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for snapshot, rate in snapshots:
        shown = figures(snapshot, rate, at)
        work = max(snapshot.total - snapshot.skipped, 1)
        table.add_row(
            f"{snapshot.id} [dim]{snapshot.collection}[/]",
            ProgressBar(total=work, completed=snapshot.done + snapshot.failed, width=30),
            f"{snapshot.done}/{snapshot.total - snapshot.skipped}",
            Text(str(snapshot.failed), style="red" if snapshot.failed else ""),
            str(snapshot.pending),
            f"{shown['rate']:.1f}" if shown["rate"] else "-",
            _duration(shown["elapsed"]),
            _duration(shown["eta"]),
            snapshot.state + (f" ({snapshot.skipped} unchanged, skipped)" if snapshot.skipped else ""),
        )
    parts: list = [table]
    for submission_id, recent in failures.items():
        for failure in recent:
            parts.append(Text(f"  {submission_id} row {failure['row_number']} (id {failure['id']}): {failure['reason']}",
                              style="red"))
    return Group(*parts)


def watch(
    read: Callable[[], list[Snapshot]],
    read_failures: Callable[[str], list[dict]],
    console: Console,
    until_finished: bool = True,
) -> list[Snapshot]:
    """Show live bars until every submission read is finished (or forever if not until_finished)."""
    meters: dict[str, RateMeter] = {}
    period = 1 / defaults.STATUS_REFRESH_PER_SECOND

    def frame() -> tuple[Group, list[Snapshot]]:
        at = time.time()
        snapshots = read()
        rows = []
        for snapshot in snapshots:
            meter = meters.setdefault(snapshot.id, RateMeter())
            meter.add(at, snapshot.done + snapshot.failed)
            rows.append((snapshot, meter.rate if meter.rate is not None else overall_rate(snapshot)))
        failures = {s.id: read_failures(s.id) for s in snapshots if s.failed}
        return render(rows, at, failures), snapshots

    view, snapshots = frame()
    with Live(view, console=console, refresh_per_second=defaults.STATUS_REFRESH_PER_SECOND, transient=False) as live:
        while not (until_finished and all(snapshot.finished for snapshot in snapshots)):
            time.sleep(period)
            view, snapshots = frame()
            live.update(view)
    return snapshots


def wait_plain(read: Callable[[], Snapshot], console: Console, every: float = 2.0) -> Snapshot:
    """Block until finished, printing a plain line when the numbers change (at most every few s)."""
    meter, last_line, last_print = RateMeter(), "", 0.0
    while True:
        at = time.time()
        snapshot = read()
        meter.add(at, snapshot.done + snapshot.failed)
        line = plain_line(snapshot, meter.rate or overall_rate(snapshot), at)
        if snapshot.finished or (line != last_line and at - last_print >= every):
            console.print(line, highlight=False, soft_wrap=True)
            last_line, last_print = line, at
        if snapshot.finished:
            return snapshot
        time.sleep(1 / defaults.STATUS_REFRESH_PER_SECOND)
