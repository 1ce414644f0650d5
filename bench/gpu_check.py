"""MiniLM's raw encode on a GPU against csvembed end to end; run by bench/gpu_check.sh, which installs it.

    python bench/gpu_check.py [--rows 200000] [--model all-MiniLM-L6-v2] [--device cuda] [--workers 1024,1024x2,1024x4]

Prints, on short titles:
  encode    rows/s of the model's encode over every text, 1024 per call (after a warm-up), in a process
            of its own: a GPU in exclusive-process mode admits one process, and this one's workers come next
  csvembed  rows/s from `csvembed submit` start until every row is done: embedded Redis, warm
            `csvembed worker --device cuda --batch-size B` processes, for each B or BxN (N workers)
  ratio     csvembed / encode
  vectors   the largest difference between a stored vector and the raw encode's for the same row
A worker that exits or a run that stalls ends the check with the worker's log.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from datasets import scratch_dir, write_titles  # noqa: E402

from bench import BIN, World, stop  # noqa: E402
from csvembed.store import open_store  # noqa: E402

STALL_S = 120  # no row stored for this long: the run is stuck


def raw_encode(texts_file: Path, vectors_file: Path, model: str, device: str) -> None:
    """Prints rows/s of sentence-transformers' own encode, 1024 texts per call; saves its vectors."""
    import torch

    from csvembed.embedder import SentenceTransformerEmbedder

    texts = texts_file.read_text(encoding="utf-8").split("\n")
    encoder = SentenceTransformerEmbedder(model, device=device).model
    encoder.encode(texts[:4096], batch_size=1024, normalize_embeddings=True, show_progress_bar=False)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    vectors = encoder.encode(texts, batch_size=1024, normalize_embeddings=True, show_progress_bar=False)
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"{len(texts) / (time.perf_counter() - start)}")
    np.save(vectors_file, vectors)


def wait_done(world: World, submission_id: str, workers: list[tuple[subprocess.Popen, Path]]) -> None:
    """Until every row is done; a worker that exits, or no progress for STALL_S, ends the check with its log."""
    last, since = -1, time.monotonic()
    while not (snapshot := world.records.snapshot(submission_id)).finished:
        if snapshot.done + snapshot.failed != last:
            last, since = snapshot.done + snapshot.failed, time.monotonic()
        exited = [log for process, log in workers if process.poll() is not None]
        if exited or time.monotonic() - since > STALL_S:
            for _, log in workers:
                print(f"--- {log}:\n{log.read_text(errors='replace')[-4000:]}", file=sys.stderr)
            sys.exit(f"{'a worker exited' if exited else 'no progress'}: {snapshot}")
        time.sleep(0.05)
    assert snapshot.failed == 0, snapshot


def stored_difference(world: World, texts: list[str], expected: np.ndarray) -> float:
    """Largest absolute difference between a stored vector and the raw encode's, over every row."""
    store = open_store(str(world.home / "store.db"))
    worst, seen = 0.0, 0
    for _, number, text, _, vector in store.rows_of_submission(world.last_snapshot.id):
        assert text == texts[number - 1], (number, text)
        worst = max(worst, float(np.abs(vector - expected[number - 1]).max()))
        seen += 1
    store.close()
    assert seen == len(texts), f"{seen} rows stored of {len(texts)}"
    return worst


def run(world: World, spec: str, device: str, path: Path, warmup: Path, texts: list[str]) -> tuple[float, str]:
    """One set-up (B or BxN): warm workers, then the timed submission; its rows/s and a line to print."""
    batch, _, count = spec.partition("x")
    args = ("--text-column", "body")
    command = [str(BIN / "csvembed"), "worker", "--device", device, "--batch-size", batch]
    workers = []
    for n in range(int(count or 1)):
        log = world.home / f"worker-{n}.log"
        with log.open("w") as out:
            workers.append((subprocess.Popen(command, env=world.env, stdout=out, stderr=subprocess.STDOUT), log))
    wait_done(world, world.submit(warmup, *args, "--collection", "warmup"), workers)  # models loaded
    start = time.perf_counter()
    submission_id = world.submit(path, *args)
    wait_done(world, submission_id, workers)
    rate = len(texts) / (time.perf_counter() - start)
    for process, _ in workers:
        stop(process)
    world.last_snapshot = snapshot = world.records.snapshot(submission_id)
    worker_only = len(texts) / (snapshot.updated_at - snapshot.started_at)
    workers_used = f"batch {batch}, {count or 1} worker(s)"
    return rate, f"{rate:12,.0f} rows/s  ({workers_used}; first batch to last row {worker_only:,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", default="1024,1024x2,1024x4",
                        help="batch sizes, BxN for N workers (a worker leaves the GPU idle while it tokenizes"
                        " and stores)")
    parser.add_argument("--encode", nargs=2, type=Path, metavar=("TEXTS", "VECTORS"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.encode:
        raw_encode(*options.encode, options.model, options.device)
        return
    scratch = scratch_dir("csvembed-gpu-")
    path = scratch / "titles.csv"
    texts = write_titles(path, options.rows)
    warmup = scratch / "warmup.csv"
    warmup.write_text("sku,body,price\n1,warm up,1.99\n", encoding="utf-8")
    os.environ["CSVEMBED_MODEL"] = options.model  # submit and worker (World passes the environment on)

    (scratch / "texts.txt").write_text("\n".join(texts), encoding="utf-8")
    done = subprocess.run([sys.executable, __file__, "--model", options.model, "--device", options.device,
                           "--encode", str(scratch / "texts.txt"), str(scratch / "vectors.npy")],
                          check=True, capture_output=True, text=True)
    encode = float(done.stdout.split()[-1])
    expected = np.load(scratch / "vectors.npy")
    print(f"encode    {encode:12,.0f} rows/s  ({options.rows:,} short rows, 1024 per call)", flush=True)
    for spec in options.workers.split(","):
        home = scratch / f"home-{spec}"
        home.mkdir()
        world = World(home)
        try:
            rate, line = run(world, spec, options.device, path, warmup, texts)
            worst = stored_difference(world, texts, expected)
        finally:
            world.close()
        print(f"csvembed  {line}  ratio {rate / encode:.2f}  vectors within {worst:.1e} of encode's", flush=True)


if __name__ == "__main__":
    main()
