"""Throughput against the number of worker processes sharing one store on this machine.

    .venv/bin/python bench/scaling.py [--rows 3000] [--workers 1 2 4] [--db postgresql://...]

Each run starts N warm `csvembed worker` processes on one embedded Redis and one store, then
times `submit` of the support-ticket CSV until every row is done.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from datasets import scratch_dir, write_tickets

from bench import BIN, World, stop, timed_run, warm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    options = parser.parse_args()
    scratch = scratch_dir("csvembed-scaling-")
    path = scratch / "tickets.csv"
    write_tickets(path, options.rows)
    with path.open(encoding="utf-8") as fh:
        (scratch / "warmup.csv").write_text(fh.readline() + fh.readline(), encoding="utf-8")
    args = ("--text-column", "body", "--id-column", "ticket_id")
    baseline = None
    for count in options.workers:
        world = World(Path(tempfile.mkdtemp(dir=scratch)))
        workers = [world.start(str(BIN / "csvembed"), "worker") for _ in range(count - 1)]
        workers.append(warm(world, [str(BIN / "csvembed"), "worker"], args, scratch / "warmup.csv"))
        while world.connection.scard("rq:workers") < count:  # a worker registers once its model is loaded
            time.sleep(0.2)
        rate = timed_run(world, path, args, options.rows)
        for worker in workers:
            stop(worker)
        world.close()
        baseline = baseline or rate
        print(f"{count} worker processes: {rate:7.1f} rows/s  ({rate / baseline:.2f}x one worker)", flush=True)


if __name__ == "__main__":
    main()
