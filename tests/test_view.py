"""What people read: one true rate and ETA everywhere, a live view that fits the terminal, end states
that tell "done, 2 rows failed" from "nothing worked", headers, and singular/plural."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import write_csv
from csvembed.api import Csvembed
from csvembed.cli import app
from csvembed.cli.data import hit_lines
from csvembed.cli.status_view import plain, render
from csvembed.cli.watch import follow
from csvembed.figures import lines
from csvembed.monitor import Monitor, QueueStats, Reading
from csvembed.store import Hit
from csvembed.submissions import Snapshot
from doubles import HashEmbedder

T0 = 1_000_000.0


def snapshot(done: int, failed: int = 0, *, samples: tuple = (), state: str = "running", total: int = 3000,
             skipped: int = 0, updated: float | None = None, sid: str = "7b1fcd75ea",
             collection: str = "tickets") -> Snapshot:
    return Snapshot(id=sid, state=state, total=total, done=done, failed=failed, skipped=skipped,
                    pending=total - skipped - done - failed, collection=collection, file="tickets.csv",
                    queue="csvembed", model="m", created_at=T0, started_at=T0 + 5,
                    updated_at=updated or (samples[-1][0] if samples else None), samples=list(samples))


def reading(*snapshots: Snapshot, workers: int = 2) -> Reading:
    return Reading(list(snapshots), {"csvembed": QueueStats("csvembed", 1200, 256, workers)})


def shown(rendered, width: int) -> list[str]:
    console = Console(file=io.StringIO(), record=True, width=width, force_terminal=True, color_system="truecolor")
    console.print(rendered)
    return [line.rstrip() for line in console.export_text().splitlines()]


# --- the rate and the ETA ----------------------------------------------------------------------------------

# The run: batches of 1500 rows, the first took 15.4 s (from T0 + 5), the next 32.5 s.
FIRST = (T0 + 20.4, 1500)
SECOND = (T0 + 52.9, 3000)


def test_the_rate_spans_whole_batches_and_holds_between_them():
    after_first = snapshot(1500, samples=(FIRST,), total=6000)
    for at in (T0 + 21, T0 + 40, T0 + 52):  # between the batches: steady, never blank
        (line,) = lines(reading(after_first), at)
        assert round(line.rate, 2) == round(1500 / 15.4, 2) == 97.40
    # The ETA counts down from the moment rows finished: 4500 rows at 97.4/s = 46.2 s after T0 + 20.4.
    assert [round(lines(reading(after_first), at)[0].eta, 1) for at in (T0 + 21, T0 + 40, T0 + 66)] == [45.6, 26.6, 0.6]
    assert lines(reading(after_first), T0 + 100)[0].eta == 0.0  # late: 0:00, not blank
    # Once a window of 30 s has passed, the rate covers the latest 30 s or more of whole batches only.
    (line,) = lines(reading(snapshot(3000, samples=(FIRST, SECOND), total=6000)), T0 + 60)
    assert round(line.rate, 2) == round(1500 / 32.5, 2)
    assert round(line.eta, 1) == round(52.9 + 3000 / (1500 / 32.5) - 60, 1)


def test_no_rate_or_eta_before_the_first_batch_and_the_average_once_finished():
    (line,) = lines(reading(snapshot(0)), T0 + 10)
    assert (line.rate, line.eta) == (None, None)
    done = snapshot(3000, state="done", samples=(FIRST, SECOND), updated=T0 + 52.9)
    (line,) = lines(reading(done), T0 + 500)
    assert (round(line.rate, 2), line.eta, round(line.elapsed, 1)) == (round(3000 / 47.9, 2), 0.0, 52.9)


def test_one_rate_in_the_live_view_the_plain_line_and_json():
    now = reading(snapshot(1500, samples=(FIRST,)))
    (text,) = plain(now, T0 + 30)
    assert text == ("7b1fcd75ea running: 1500/3000 done, 0 failed, 256 in progress, 1500 pending, 0 skipped,"
                    " 97.4 rows/s, elapsed 0:30, eta 0:06, 2 workers")
    assert round(lines(now, T0 + 30)[0].as_json()["rate"], 3) == 97.403
    assert shown(render(now, T0 + 30, {}, 120), 120)[1].split()[-4:] == ["97.4", "0:30", "0:06", "running"]


class SlowEmbedder(HashEmbedder):
    """A model that takes a fixed time per row, so the true rate is known whatever the batch size."""

    def __init__(self, seconds_per_row: float) -> None:
        super().__init__()
        self.seconds_per_row = seconds_per_row

    def encode(self, texts):
        time.sleep(self.seconds_per_row * len(texts))
        return super().encode(texts)


def test_the_shown_rate_stays_within_20_percent_of_the_true_one_with_long_batches(env, submit, drain):
    # Batches of 1 s, long against the worker's own time between batches (~0.1 s on a loaded machine),
    # which the first batch's rate cannot know of.
    rows, batch = 120, 40
    path = write_csv(env.dir / "slow.csv", "text\n" + "".join(f"row {n}\n" for n in range(rows)))
    submission = submit(path, model=HashEmbedder.name).id
    monitor, seen, stop = Monitor(env.connection), [], threading.Event()

    def sample() -> None:  # as the live view does: a reading, then its figures
        while not stop.is_set():
            (line,) = lines(monitor.read([submission]), time.time())
            seen.append(line)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        drain(batch_size=batch, model=SlowEmbedder(0.025))
    finally:
        stop.set()
        sampler.join()
    final = monitor.read([submission]).snapshots[0]
    true_rate = rows / (final.updated_at - final.started_at)
    after_first = [line for line in seen if line.snapshot.done >= batch and not line.snapshot.finished]
    assert len(after_first) > 20
    assert all(abs(line.rate - true_rate) <= 0.2 * true_rate for line in after_first), \
        (true_rate, [round(line.rate, 1) for line in after_first])
    assert all(line.eta is not None for line in after_first)
    (last,) = lines(monitor.read([submission]), time.time())
    assert last.rate == true_rate  # the same figure as status --json and the plain line give afterwards


# --- fitting the terminal -----------------------------------------------------------------------------------

def busy(skipped: int = 1200) -> Reading:
    """A long run: 8.9 rows/s over the latest 32.9 s, 97,008 rows to go: an ETA over 3 hours."""
    return reading(snapshot(1790, 2, samples=((T0 + 20, 1500), (T0 + 52.9, 1792)), total=100000 + skipped,
                            skipped=skipped, collection="support-tickets"), workers=1)


def test_at_120_columns_every_column_shows_with_a_bar():
    assert shown(render(busy(skipped=0), T0 + 60, {}, 120), 120)[:2] == [
        "submission                  progress               done  failed  in progress  pending  rows/s  elapsed"
        "      eta  state",
        "7b1fcd75ea support-tickets  ━━━━━━━━━━━━━━  1790/100000       2          256    98208     8.9     1:00"
        "  3:04:18  running",
    ]


def test_at_80_columns_the_bar_shrinks_and_the_least_useful_columns_go_but_no_number_is_cut():
    rows = shown(render(busy(), T0 + 60, {}, 80), 80)
    assert rows == [
        "submission  progress                      done  failed  rows/s      eta  state",
        "7b1fcd75ea  ━━━━━━━━━━━━━━━━━━━━━  1790/100000       2     8.9  3:04:18  running",
        "queue csvembed: 1200 waiting, 256 in progress, 1 worker",
    ]
    # At 120 the same reading keeps everything but "in progress", which the queue line gives.
    assert shown(render(busy(), T0 + 60, {}, 120), 120)[0] == (
        "submission                  progress                 done  failed  pending  unchanged  rows/s  elapsed"
        "      eta  state")


def test_a_narrow_terminal_drops_the_bar_last_and_never_a_number():
    assert shown(render(busy(), T0 + 60, {}, 60), 60)[:2] == [
        "submission         done  failed  rows/s      eta  state",
        "7b1fcd75ea  1790/100000       2     8.9  3:04:18  running",
    ]


# --- end states, headers, singular and plural -----------------------------------------------------------------

@pytest.mark.parametrize(("csv_text", "state", "code"), [
    ("id,text\n1,a\n2,b\n", "done", 0),
    ("id,text\n1,a\n2,\n3,b\n", "partial", 1),  # 2 rows stored, 1 failed (empty text)
    ("id,text\n1,\n2,\n", "failed", 1),  # nothing worked
])
def test_end_states_tell_some_failed_from_nothing_worked(env, submit, drain, fake_embedder, csv_text, state, code):
    submission = submit(write_csv(env.dir / "rows.csv", csv_text), model=fake_embedder.name, text_columns=("text",)).id
    drain(model=fake_embedder)
    assert Monitor(env.connection).records.snapshot(submission).state == state
    assert follow(Csvembed(env.settings, env.connection), submission) == code  # status --wait's exit code


def test_list_has_a_header_and_aligned_columns(env, submit, drain, fake_embedder):
    path = write_csv(env.dir / "rows.csv", "id,text\n1,a\n2,\n3,b\n")
    submission = submit(path, model=fake_embedder.name, text_columns=("text",)).id
    drain(model=fake_embedder)
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    created = time.strftime("%Y-%m-%d %H:%M:%S",
                            time.localtime(Monitor(env.connection).records.snapshot(submission).created_at))
    assert result.stdout.splitlines() == [
        "submission  created              state    done  failed  pending  collection  file",
        f"{submission}  {created}  partial   2/3       1        0  rows        {path}",
    ]


def test_counts_of_one_read_in_the_singular():
    (text,) = plain(reading(snapshot(1500, samples=(FIRST,)), workers=1), T0 + 30)
    assert text.endswith(", 1 worker")
    assert shown(render(reading(snapshot(0), workers=1), T0 + 1, {}, 120), 120)[2] == (
        "queue csvembed: 1200 waiting, 256 in progress, 1 worker")


def test_the_workers_command_counts_in_the_singular_and_plural(env):
    result = CliRunner().invoke(app, ["workers"])
    assert (result.exit_code, result.stderr) == (0, "0 workers\n")


def test_search_shows_the_collection_so_the_same_id_in_two_reads_as_two_rows():
    hits = [Hit("shoes", "s1", 1, "sku-1", 0.1234, "Trail boot " * 20, {}),
            Hit("boots-archive", "s2", 1, "sku-1", 0.2, "Trail boot", {})]
    assert hit_lines(hits, [], 80) == [
        "distance  collection     id     text",
        "0.1234    shoes          sku-1  " + ("Trail boot " * 20)[:47] + "…",
        "0.2000    boots-archive  sku-1  Trail boot",
    ]


def test_status_json_keeps_simple_state_identifiers(env, submit, drain, fake_embedder):
    submission = submit(write_csv(env.dir / "rows.csv", "id,text\n1,a\n2,\n"), model=fake_embedder.name,
                        text_columns=("text",)).id
    drain(model=fake_embedder)
    result = CliRunner().invoke(app, ["status", submission, "--json"])
    assert (result.exit_code, json.loads(result.stdout)["state"]) == (0, "partial")
    assert "samples" not in json.loads(result.stdout)


def test_the_live_view_counts_how_long_rows_were_read():
    plain_rows = snapshot(3000, state="done")
    assert shown(render(reading(plain_rows), T0 + 60, {}, 120), 120)[2:] == [  # nothing long: no line
        "queue csvembed: 1200 waiting, 256 in progress, 2 workers"]
    windowed = snapshot(3000, state="done")
    windowed.rows_whole, windowed.rows_windowed, windowed.windows, windowed.rows_truncated = 2997, 3, 14, 1
    assert shown(render(reading(windowed), T0 + 60, {}, 120), 120)[2:] == [
        "queue csvembed: 1200 waiting, 256 in progress, 2 workers",
        "7b1fcd75ea long text: 3 rows in 14 windows, 1 truncated, 2997 whole",
    ]
