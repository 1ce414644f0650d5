"""MiniLM's raw encode on a GPU against csvembed end to end; run by bench/gpu_check.sh, which installs it.

    python bench/gpu_check.py [--rows 200000] [--model all-MiniLM-L6-v2] [--device cuda] [--workers 1024,4096,1024x2]

Prints, on short titles:
  encode    rows/s of the model's encode over every text, 1024 per call (after a warm-up)
  csvembed  rows/s from `csvembed submit` start until every row is done: embedded Redis, warm
            `csvembed worker --device cuda --batch-size B` processes, for each B or BxN (N workers)
  ratio     csvembed / encode
  vectors   the largest difference between a stored vector and the raw encode's for the same row
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from datasets import scratch_dir, write_titles  # noqa: E402

from bench import BIN, World, stop, timed_run, warm  # noqa: E402
from csvembed.embedder import SentenceTransformerEmbedder  # noqa: E402
from csvembed.store import open_store  # noqa: E402


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def raw_encode(texts: list[str], model: str, device: str) -> tuple[float, np.ndarray]:
    """rows/s and vectors of sentence-transformers' own encode, 1024 texts per call."""
    encoder = SentenceTransformerEmbedder(model, device=device).model
    encoder.encode(texts[:4096], batch_size=1024, normalize_embeddings=True, show_progress_bar=False)
    synchronize(device)
    start = time.perf_counter()
    vectors = encoder.encode(texts, batch_size=1024, normalize_embeddings=True, show_progress_bar=False)
    synchronize(device)
    rate = len(texts) / (time.perf_counter() - start)
    del encoder
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
    return rate, vectors


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", default="1024,4096,1024x2", help="batch sizes, BxN for N workers")
    options = parser.parse_args()
    scratch = scratch_dir("csvembed-gpu-")
    path = scratch / "titles.csv"
    texts = write_titles(path, options.rows)
    warmup = scratch / "warmup.csv"
    warmup.write_text("sku,body,price\n1,warm up,1.99\n", encoding="utf-8")
    args = ("--text-column", "body")
    os.environ["CSVEMBED_MODEL"] = options.model  # submit and worker (World passes the environment on)
    encode, expected = raw_encode(texts, options.model, options.device)
    import sentence_transformers
    import torch
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"sentence-transformers {sentence_transformers.__version__}")
    print(f"encode    {encode:12,.0f} rows/s  ({options.rows:,} short rows, 1024 per call)")
    for spec in options.workers.split(","):
        batch, _, count = spec.partition("x")
        home = scratch / f"home-{spec}"
        home.mkdir()
        world = World(home)
        command = [str(BIN / "csvembed"), "worker", "--device", options.device, "--batch-size", batch]
        workers = [warm(world, command, args, warmup) for _ in range(int(count or 1))]
        ours = timed_run(world, path, args, options.rows)
        for worker in workers:
            stop(worker)
        snapshot = world.last_snapshot
        worker_only = options.rows / (snapshot.updated_at - snapshot.started_at)
        worst = stored_difference(world, texts, expected)
        world.close()
        print(f"csvembed  {ours:12,.0f} rows/s  (batch {batch}, {count or 1} worker(s); from first batch to last"
              f" row {worker_only:,.0f} rows/s)  ratio {ours / encode:.2f}  vectors within {worst:.1e} of encode's")


if __name__ == "__main__":
    main()
