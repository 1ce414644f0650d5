"""What `csvembed submit` costs per row: the producer's CPU, Redis' CPU, commands and memory.

    .venv/bin/python bench/producer_cost.py [--rows 50000] [--runs 5] [--cli-runs 3] [--profile FILE]

Each run submits N short titles (bench/datasets.py write_titles, `--text-column body`) through the
library (Producer.submit, in this process) into a fresh private embedded Redis (ceiling.World) and
prints the medians over --runs of: rows/s, producer CPU per row (getrusage of this process), Redis
CPU per row (`INFO cpu` used_cpu_user + used_cpu_sys deltas), Redis commands per row (INFO
commandstats, calls made by Lua scripts included), and Redis memory per queued row (`INFO memory`
used_memory delta / rows). Then the CLI's wall time for the same file, start-up included
and its CPU (`python -m csvembed submit`, this interpreter and PYTHONPATH), medians of --cli-runs.
Nothing works the queue meanwhile: the figures are the producer's alone.
"""

from __future__ import annotations

import argparse
import cProfile
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ceiling import World, cpu_seconds, show  # noqa: E402
from datasets import scratch_dir, write_titles  # noqa: E402


def redis_memory(world: World) -> int:
    return int(world.connection.info("memory")["used_memory"])


def library_run(path: Path, rows: int, scratch: Path, profile: cProfile.Profile | None = None) -> dict:
    """One submit through the library into a fresh Redis; what it cost."""
    world = World(scratch, "constant")
    try:
        memory, redis_cpu, calls = redis_memory(world), world.redis_cpu(), world.redis_calls()
        cpu, start = cpu_seconds(), time.perf_counter()
        if profile:
            profile.enable()
        submission_id = world.submit(path)
        if profile:
            profile.disable()
        wall = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
        # The INFO reads between the two calls counts are the bench's, not the producer's.
        figures = {"rows/s": rows / wall, "producer µs/row": cpu / rows * 1e6,
                   "redis µs/row": (world.redis_cpu() - redis_cpu) / rows * 1e6,
                   "commands/row": (world.redis_calls() - calls - 3) / rows,
                   "bytes/row": (redis_memory(world) - memory) / rows}
        snapshot = world.records.snapshot(submission_id)
        assert (snapshot.total, snapshot.pending) == (rows, rows), snapshot
        assert world.connection.llen(f"rq:queue:{world.queue}") == rows
        return figures
    finally:
        world.close()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli_run(path: Path, rows: int, scratch: Path) -> dict:
    """`python -m csvembed submit` into a fresh Redis, already started (as it usually is): its wall and CPU
    seconds, start-up included, and its CPU per row."""
    world = World(scratch, "constant")
    try:
        cpu, start = children_cpu(), time.perf_counter()
        subprocess.run([sys.executable, "-m", "csvembed", "submit", str(path), "--text-column", "body"],
                       env=world.env, cwd=scratch, check=True, capture_output=True)  # not this checkout's csvembed
        wall, cpu = time.perf_counter() - start, children_cpu() - cpu
        return {"wall s": wall, "cpu s": cpu, "cpu µs/row": cpu / rows * 1e6}
    finally:
        world.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cli-runs", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="write a cProfile of one more library run here")
    args = parser.parse_args()
    scratch = scratch_dir("csvembed-producer-")
    titles = scratch / "titles.csv"
    write_titles(titles, args.rows)

    show(f"submit (library), {args.rows:,} short titles:",
         [library_run(titles, args.rows, scratch) for _ in range(args.runs)])
    if args.cli_runs:
        show("submit (CLI, start-up included):", [cli_run(titles, args.rows, scratch) for _ in range(args.cli_runs)])
    if args.profile:
        profile = cProfile.Profile()
        library_run(titles, args.rows, scratch, profile)
        profile.dump_stats(args.profile)


if __name__ == "__main__":
    main()
