"""Throughput benchmark: csvembed end to end against the model's own limit and a naive RQ worker.

    .venv/bin/python bench/bench.py [--rows 3000] [--runs 3] [--skip-naive] [--skip-submit]

Per dataset (multi-sentence support tickets, short product titles), in one run on one machine:
  limit     rows/s of encode(texts, batch_size=32, normalize_embeddings=True) on the same texts
  csvembed  rows/s from `csvembed submit` start until status shows every row done, one warm
            `csvembed worker` (model already loaded); `cold` is the same with `worker --burst`
            started after submit, so it includes loading the model; `worker` is the same run
            from the first batch's start to the last row stored (the submit process excluded)
  naive     rows/s of a plain `rq worker` (SimpleWorker) running csvembed's per-row job function,
            one encode call per row, warm
Prints medians over --runs runs. Then Redis memory per queued and per finished row, and submit
speed and peak RSS on generated files of 100k and 1M rows (no embedding).
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).parent))
from datasets import scratch_dir, write_tickets, write_titles  # noqa: E402

from csvembed.broker import connect, stop_local_redis  # noqa: E402
from csvembed.embedder import SentenceTransformerEmbedder  # noqa: E402
from csvembed.settings import Settings  # noqa: E402
from csvembed.submissions import SubmissionRecords  # noqa: E402

# Where the csvembed command is: the running python's bin folder, unless a --target install put it elsewhere.
BIN = Path(os.environ.get("CSVEMBED_BENCH_BIN") or Path(sys.executable).parent)


class World:
    """A private csvembed home (embedded Redis, store) for one measurement."""

    def __init__(self, root: Path) -> None:
        self.home = root
        self.env = {**os.environ, "CSVEMBED_HOME": str(root), "CSVEMBED_DB": str(root / "store.db")}
        self.env.pop("CSVEMBED_REDIS_URL", None)
        self.settings = Settings(home=root, db=root / "store.db", model="all-MiniLM-L6-v2")
        self.connection: redis.Redis = connect(self.settings)
        self.records = SubmissionRecords(self.connection)
        self.last_snapshot = None  # the finished submission of the latest timed run

    def submit(self, path: Path, *args: str) -> str:
        done = subprocess.run([BIN / "csvembed", "submit", str(path), *args], env=self.env, check=True,
                              capture_output=True)
        return done.stdout.decode().strip()

    def wait_done(self, submission_id: str) -> None:
        while not (snapshot := self.records.snapshot(submission_id)).finished:
            time.sleep(0.05)
        assert snapshot.failed == 0, snapshot

    def start(self, *command: str) -> subprocess.Popen:
        return subprocess.Popen(command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        stop_local_redis(self.settings)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(60)


def timed_run(world: World, path: Path, args: tuple[str, ...], rows: int) -> float:
    start = time.perf_counter()
    submission_id = world.submit(path, *args)
    world.wait_done(submission_id)
    world.last_snapshot = world.records.snapshot(submission_id)
    return rows / (time.perf_counter() - start)


def worker_rate(world: World, rows: int) -> float:
    """Rows/s of the worker alone: from its first batch's start to the last row stored (no submit)."""
    snapshot = world.last_snapshot
    return rows / (snapshot.updated_at - snapshot.started_at)


def warm(world: World, worker: list[str], args: tuple[str, ...], warmup: Path) -> subprocess.Popen:
    """Start a worker and wait until it has embedded one row (into another collection): model loaded."""
    process = world.start(*worker)
    world.wait_done(world.submit(warmup, *args, "--collection", "warmup"))
    return process


def measure(path: Path, texts: list[str], args: tuple[str, ...], embedder, naive: bool, scratch: Path) -> dict:
    rows = len(texts)
    warmup = scratch / "warmup.csv"
    with path.open(encoding="utf-8") as fh:
        warmup.write_text(fh.readline() + fh.readline(), encoding="utf-8")
    figures = {}
    start = time.perf_counter()
    embedder.model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    figures["limit"] = rows / (time.perf_counter() - start)

    world = World(Path(tempfile.mkdtemp(dir=scratch)))
    worker = warm(world, [str(BIN / "csvembed"), "worker"], args, warmup)
    figures["csvembed"] = timed_run(world, path, args, rows)
    figures["worker"] = worker_rate(world, rows)
    # The same file again: every row is unchanged, so nothing is embedded.
    figures["resubmit_s"] = rows / timed_run(world, path, args, rows)
    figures["first_s"] = rows / figures["csvembed"]
    stop(worker)
    world.close()

    world = World(Path(tempfile.mkdtemp(dir=scratch)))
    start = time.perf_counter()
    submission_id = world.submit(path, *args)
    subprocess.run([BIN / "csvembed", "worker", "--burst"], env=world.env, check=True, capture_output=True)
    world.wait_done(submission_id)
    figures["cold"] = rows / (time.perf_counter() - start)
    world.close()

    if naive:
        world = World(Path(tempfile.mkdtemp(dir=scratch)))
        url = f"unix://{world.home / 'redis' / 'redis.sock'}"
        worker = warm(world, [str(BIN / "rq"), "worker", "--url", url, "--worker-class", "rq.worker.SimpleWorker",
                              "--serializer", "rq.serializers.JSONSerializer", "csvembed"], args, warmup)
        figures["naive"] = timed_run(world, path, args, rows)
        stop(worker)
        world.close()
    return figures


def redis_memory(scratch: Path, rows: int = 20_000) -> dict:
    """Bytes per queued row beyond the row's own bytes, and per finished row."""
    path = scratch / "memory.csv"
    texts = write_titles(path, rows)
    world = World(Path(tempfile.mkdtemp(dir=scratch)))
    before = world.connection.info("memory")["used_memory"]
    submission_id = world.submit(path, "--text-column", "body", "--id-column", "sku")
    queued = world.connection.info("memory")["used_memory"] - before
    with path.open(newline="") as fh:
        own = sum(len(text.encode()) + sum(len(v.encode()) for v in row.values())
                  for text, row in zip(texts, csv.DictReader(fh), strict=True))
    # Finish every row the way a worker does, without embedding: the bookkeeping alone is measured.
    worker = world.start(str(BIN / "csvembed"), "worker", "--burst")
    worker.wait()
    world.wait_done(submission_id)
    finished = world.connection.info("memory")["used_memory"] - before
    world.close()
    return {"queued_per_row": (queued - own) / rows, "row_bytes": own / rows, "finished_per_row": finished / rows}


def submit_at_scale(scratch: Path, rows: int) -> dict:
    path = scratch / f"scale-{rows}.csv"
    with path.open("w") as fh:
        fh.write("id,text,price\n")
        for i in range(1, rows + 1):
            fh.write(f"{i},Item number {i} with a short description of {i % 97} words,{i % 500}.99\n")
    world = World(Path(tempfile.mkdtemp(dir=scratch)))
    start = time.perf_counter()
    # GNU time reports the peak RSS of the submit process alone (in KB) as the last line of stderr.
    child = subprocess.run(["/usr/bin/time", "-f", "%M", BIN / "csvembed", "submit", str(path), "--text-column",
                            "text"], env=world.env, capture_output=True, check=True)
    elapsed = time.perf_counter() - start
    peak = int(child.stderr.decode().strip().splitlines()[-1]) / 1024
    queued = world.connection.llen("rq:queue:csvembed")
    world.connection.flushall()
    world.close()
    path.unlink()
    return {"rows": rows, "queued": queued, "rows_per_s": rows / elapsed, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-submit", action="store_true")
    parser.add_argument("--only-submit", action="store_true", help="Only the Redis memory and submit figures.")
    options = parser.parse_args()
    scratch = scratch_dir("csvembed-bench-")
    embedder = SentenceTransformerEmbedder("all-MiniLM-L6-v2")
    datasets = {
        "tickets (multi-sentence)": (write_tickets, ("--text-column", "body", "--id-column", "ticket_id")),
        "titles (5-15 words)": (write_titles, ("--text-column", "body", "--id-column", "sku")),
    }
    for name, (write, args) in ({} if options.only_submit else datasets).items():
        path = scratch / "data.csv"
        texts = write(path, options.rows)
        runs = [measure(path, texts, args, embedder, not options.skip_naive, scratch) for _ in range(options.runs)]
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(f"\n{name}: {options.rows} rows, medians of {options.runs} runs")
        for key, value in median.items():
            if not key.endswith("_s"):
                print(f"  {key:<9} {value:8.1f} rows/s")
        print(f"  resubmit  {median['resubmit_s']:8.2f} s for the unchanged file, against {median['first_s']:.1f} s"
              f" the first time ({median['resubmit_s'] / median['first_s']:.1%})")
        print(f"  ratio     {median['csvembed'] / median['limit']:8.2f}  (csvembed / limit, warm worker)")
        print(f"  ratio     {median['worker'] / median['limit']:8.2f}  (the worker alone / limit: submit excluded)")
        print(f"  ratio     {median['cold'] / median['limit']:8.2f}  (cold: worker --burst, model load included)")
        if "naive" in median:
            print(f"  speed-up  {median['csvembed'] / median['naive']:8.2f}x over the naive per-row worker")
        sys.stdout.flush()
    memory = redis_memory(scratch)
    print(f"\nRedis: {memory['queued_per_row']:.0f} B per queued row beyond its own {memory['row_bytes']:.0f} B;"
          f" {memory['finished_per_row']:.1f} B per finished row")
    if not options.skip_submit:
        for rows in (100_000, 1_000_000):
            scale = submit_at_scale(scratch, rows)
            print(f"submit {scale['rows']:>9,} rows: {scale['rows_per_s']:8.0f} rows/s, peak RSS"
                  f" {scale['peak_rss_mb']:.0f} MB, {scale['queued']:,} queued")


if __name__ == "__main__":
    main()
