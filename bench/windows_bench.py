"""The cost of reading every word: `--long-text window` against `truncate` on the support tickets.

    PYTHONPATH=. .venv/bin/python bench/windows_bench.py [--rows 2000] [--runs 3] [--huge-mb 50]

In one run on one machine: the tickets' token lengths (how many rows outgrow the model's window,
and the windows they make), then rows/s from `csvembed submit --force` until every row is done with
one warm `csvembed worker` (the default backend), medians over --runs, alternating the policies.
Then the peak RSS and time of `worker --burst` on a single cell of --huge-mb megabytes, per policy
(windowed: up to MAX_WINDOWS windows).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from datasets import scratch_dir, write_tickets  # noqa: E402

from bench import BIN, World, stop, timed_run, warm, worker_rate  # noqa: E402
from csvembed.embedder import load_embedder  # noqa: E402
from csvembed.windows import DEFAULT_OVERLAP, MAX_WINDOWS, split  # noqa: E402

POLICIES = ("truncate", "window")


def token_stats(embedder, texts: list[str]) -> str:
    lengths = np.array([len(embedder.token_spans(text)) for text in texts])
    windows = sum(len(split(text, embedder.token_spans, embedder.window_tokens, DEFAULT_OVERLAP,
                            MAX_WINDOWS, embedder.text_cap).spans) for text in texts)
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return (f"tokens p50 {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, max {lengths.max()}; rows over the window of"
            f" {embedder.window_tokens}: {(lengths > embedder.window_tokens).sum()} of {len(texts)};"
            f" windows {windows} ({windows / len(texts):.3f} per row)")


def huge_cell(world: World, scratch: Path, megabytes: int, policy: str) -> str:
    path = scratch / "huge.csv"
    sentence = "The replacement you sent last month has exactly the same problem, and I would like a refund. "
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([("id", "body"), ("1", sentence * (megabytes * 1_000_000 // len(sentence)))])
    submission = world.submit(path, "--text-column", "body", "--force", "--long-text", policy)
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", BIN / "csvembed", "worker", "--burst"], env=world.env,
                          capture_output=True, check=True)
    seconds = time.perf_counter() - started
    snapshot = world.records.snapshot(submission)
    rss = int(done.stderr.decode().strip().splitlines()[-1]) / 1024
    return (f"{megabytes} MB cell, {policy}: worker --burst peak RSS {rss:.0f} MB in {seconds:.1f} s"
            " (model load included);"
            f" windows {snapshot.windows}, rows truncated {snapshot.rows_truncated}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--huge-mb", type=int, default=50)
    options = parser.parse_args()
    scratch = scratch_dir("csvembed-windows-")
    path = scratch / "tickets.csv"
    texts = write_tickets(path, options.rows)
    (scratch / "home").mkdir()
    world = World(scratch / "home")
    try:
        print(token_stats(load_embedder(world.settings), texts), flush=True)
        args = ("--text-column", "body", "--id-column", "ticket_id", "--force")
        worker = warm(world, [str(BIN / "csvembed"), "worker"], args, path)
        rates: dict[str, list[tuple[float, float]]] = {policy: [] for policy in POLICIES}
        try:
            for _ in range(options.runs):
                for policy in POLICIES:
                    rate = timed_run(world, path, (*args, "--long-text", policy), options.rows)
                    rates[policy].append((rate, worker_rate(world, options.rows)))
                    snapshot = world.last_snapshot
            print(f"last window run: whole {snapshot.rows_whole}, windowed {snapshot.rows_windowed}"
                  f" ({snapshot.windows} windows), truncated {snapshot.rows_truncated}")
        finally:
            stop(worker)
        for policy, figures in rates.items():
            print(f"{policy:>8}: {statistics.median(r for r, _ in figures):.0f} rows/s end to end,"
                  f" worker {statistics.median(w for _, w in figures):.0f} rows/s (median of {options.runs})")
        for policy in POLICIES:
            print(huge_cell(world, scratch, options.huge_mb, policy), flush=True)
    finally:
        world.close()


if __name__ == "__main__":
    main()
