"""The live view and the plain lines show the right numbers for a known state."""

from __future__ import annotations

import io

from rich.console import Console

from csvembed.cli.status_view import plain, render
from csvembed.figures import lines
from csvembed.monitor import QueueStats, Reading
from csvembed.submissions import Snapshot

T0 = 1_000_000.0


def snapshot(done: int, failed: int, state: str = "running", updated: float | None = None) -> Snapshot:
    """Started at T0 + 5; 100 rows had finished at T0 + 50 and 300 at T0 + 60."""
    return Snapshot(id="abc123", state=state, total=1000, done=done, failed=failed, skipped=0,
                    pending=1000 - done - failed, collection="products", file="products.csv", queue="csvembed",
                    model="all-MiniLM-L6-v2", created_at=T0, started_at=T0 + 5, updated_at=updated,
                    samples=[(T0 + 50, 100), (T0 + 60, done + failed)])


def reading(done: int, failed: int, **kwargs) -> Reading:
    return Reading([snapshot(done, failed, **kwargs)], {"csvembed": QueueStats("csvembed", 600, 64, 2)})


def test_live_view_shows_bar_counts_rate_and_eta():
    console = Console(file=io.StringIO(), record=True, width=140, force_terminal=True, color_system=None)
    console.print(render(reading(290, 10), T0 + 60, {"abc123": [
        {"row_number": 7, "id": "sku-7", "reason": "empty text: nothing to embed"}]}, 140))
    text = console.export_text()
    # 300 rows finished in the 55 s since the first batch started: 5.5 rows/s; 700 pending: 2:08 to go.
    row = next(line for line in text.splitlines() if line.startswith("abc123"))
    assert row.split()[-8:] == ["290/1000", "10", "64", "700", "5.5", "1:00", "2:08", "running"]
    assert "━" in row  # the bar
    assert "queue csvembed: 600 waiting, 64 in progress, 2 workers" in text
    assert "abc123 row 7 (id sku-7): empty text: nothing to embed" in text


def test_plain_lines_have_no_cursor_codes():
    (line,) = plain(reading(290, 10), T0 + 60)
    assert line == ("abc123 running: 290/1000 done, 10 failed, 64 in progress, 700 pending, 0 skipped,"
                    " 5.5 rows/s, elapsed 1:00, eta 2:08, 2 workers")
    assert "\x1b" not in line


def test_a_finished_submission_shows_its_own_elapsed_time_and_no_eta():
    (line,) = lines(reading(1000, 0, state="done", updated=T0 + 90), T0 + 500)
    assert (line.elapsed, line.eta, line.in_progress) == (90, 0.0, 0)
    assert round(line.rate, 3) == round(1000 / 85, 3)  # from the first to the last stored row
