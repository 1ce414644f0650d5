"""The ONNX Runtime backend against PyTorch: speed, vectors, int8 quality, start time, unchanged re-run.

    .venv/bin/python bench/onnx_bench.py [--rows 2000] [--runs 3] [--quality-rows 2000] [--only speed]
                                         [--data tickets|titles]

Every ratio is taken within one run (both sides measured back to back, interleaved), and medians
over --runs runs are printed, so a noisy shared machine still gives comparable figures:
  torch      rows/s of PyTorch's encode(texts, batch_size=32, normalize_embeddings=True)
  onnx       rows/s of the ONNX embedder's encode on the same texts (fp32): the new limit
  int8       the same with --precision int8
  csvembed   rows/s from `csvembed submit` start to every row done, one warm worker (default backend)
  csvembed-int8  the same with --precision int8
  in-model   share of the ONNX embedder's encode time spent inside the ONNX Runtime session
Then int8 quality against fp32 (cosine, recall@10 of fp32's top 10), worker start times and the
unchanged re-run of a script (submit skipping every row, then worker --burst).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from datasets import scratch_dir, ticket, title, write_tickets, write_titles

from bench import BIN, World, stop, timed_run, warm
from csvembed.embedder import SentenceTransformerEmbedder, load_embedder
from csvembed.onnx_embedder import OnnxEmbedder
from csvembed.settings import Settings

DATASETS = {
    "tickets (multi-sentence)": (write_tickets, ("--text-column", "body", "--id-column", "ticket_id")),
    "titles (5-15 words)": (write_titles, ("--text-column", "body", "--id-column", "sku")),
}


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def rate(encode, texts: list[str]) -> float:
    start = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - start)


def in_model_share(embedder: OnnxEmbedder, texts: list[str]) -> float:
    """Share of encode's time inside session.run: the rest is tokenizing, padding and pooling."""
    session = embedder.session
    inside = 0.0

    class Timed:
        def run(self, *args, **kwargs):
            nonlocal inside
            start = time.perf_counter()
            try:
                return session.run(*args, **kwargs)
            finally:
                inside += time.perf_counter() - start

    embedder.session = Timed()
    try:
        start = time.perf_counter()
        embedder.encode(texts)
        return inside / (time.perf_counter() - start)
    finally:
        embedder.session = session


def end_to_end(path: Path, args: tuple[str, ...], rows: int, scratch: Path, precision: str = "fp32") -> float:
    """csvembed's rows/s with one warm worker, from submit to every row done."""
    warmup = scratch / "warmup.csv"
    with path.open(encoding="utf-8") as fh:
        warmup.write_text(fh.readline() + fh.readline(), encoding="utf-8")
    world = World(Path(tempfile.mkdtemp(dir=scratch)))
    (world.home / "onnx").symlink_to(scratch / "onnx")  # the export made once, as on a user's machine
    world.env["CSVEMBED_PRECISION"] = precision
    worker = warm(world, [str(BIN / "csvembed"), "worker"], args, warmup)
    try:
        return timed_run(world, path, args, rows)
    finally:
        stop(worker)
        world.close()


def speed(options, scratch: Path, torch_model: SentenceTransformerEmbedder, fp32: OnnxEmbedder,
          int8: OnnxEmbedder) -> None:
    for name, (write, args) in DATASETS.items():
        if options.data and not name.startswith(options.data):
            continue
        path = scratch / "data.csv"
        texts = write(path, options.rows)
        runs = []
        for _ in range(options.runs):
            figures = {
                "torch": rate(lambda t: torch_model.model.encode(t, batch_size=32, normalize_embeddings=True,
                                                                  show_progress_bar=False), texts),
                "onnx": rate(fp32.encode, texts),
                "int8": rate(int8.encode, texts),
                "in-model": in_model_share(fp32, texts),
                "csvembed": end_to_end(path, args, len(texts), scratch),
                "csvembed-int8": end_to_end(path, args, len(texts), scratch, "int8"),
            }
            runs.append(figures)
            print("  run: " + ", ".join(f"{key} {value:.2f}" for key, value in figures.items()), flush=True)
        ratios = {
            "csvembed / torch (target >= 1.4 on tickets)": [r["csvembed"] / r["torch"] for r in runs],
            "csvembed / onnx limit (target >= 0.85)": [r["csvembed"] / r["onnx"] for r in runs],
            "onnx / torch (raw encode)": [r["onnx"] / r["torch"] for r in runs],
            "int8 / onnx fp32 (raw encode)": [r["int8"] / r["onnx"] for r in runs],
            "int8 / torch (raw encode)": [r["int8"] / r["torch"] for r in runs],
            "csvembed-int8 / torch": [r["csvembed-int8"] / r["torch"] for r in runs],
        }
        print(f"\n{name}: {len(texts)} rows, medians of {options.runs} runs")
        for key in runs[0]:
            value = statistics.median(r[key] for r in runs)
            print(f"  {key:<14} {value:8.1%}" if key == "in-model" else f"  {key:<14} {value:8.1f} rows/s")
        for key, values in ratios.items():
            print(f"  ratio {statistics.median(values):6.2f}  {key}   (runs: {', '.join(f'{v:.2f}' for v in values)})")


def quality(options, torch_model: SentenceTransformerEmbedder, fp32: OnnxEmbedder, int8: OnnxEmbedder) -> None:
    """int8 against fp32 on the benchmark's texts: every text queries the others, top 10 by cosine."""
    rng = random.Random(7)
    corpus = list(dict.fromkeys([ticket(rng) for _ in range(options.quality_rows // 2)]
                                + [title(rng) for _ in range(options.quality_rows // 2)]))
    reference, exact, quantized = torch_model.encode(corpus), fp32.encode(corpus), int8.encode(corpus)

    def top10(vectors: np.ndarray) -> np.ndarray:
        scores = vectors @ vectors.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1)[:, :10]

    def recall(candidate: np.ndarray) -> float:
        truth, found = top10(exact), top10(candidate)
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)]))

    onnx_cos, int8_cos = np.sum(reference * exact, axis=1), np.sum(exact * quantized, axis=1)
    print(f"\nquality on {len(corpus)} distinct benchmark texts (each queries all others, k=10):")
    print(f"  onnx fp32 vs torch: cosine min {onnx_cos.min():.6f}, mean {onnx_cos.mean():.6f};"
          f" recall@10 of fp32's top 10 {recall(reference):.3f} (torch)")
    print(f"  int8 vs onnx fp32:  cosine min {int8_cos.min():.4f}, mean {int8_cos.mean():.4f};"
          f" recall@10 of fp32's top 10 {recall(quantized):.3f}")


def timed_command(env: dict, *command: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def start_times(options, scratch: Path) -> None:
    """A cold `worker --burst` on one queued row (cached export) per backend, and the unchanged re-run."""
    path = scratch / "one.csv"
    write_titles(path, 200)
    args = ("--text-column", "body", "--id-column", "sku")
    runs = []
    for _ in range(options.runs):
        figures = {}
        for backend in ("torch", "onnx"):
            world = World(Path(tempfile.mkdtemp(dir=scratch)))
            (world.home / "onnx").symlink_to(scratch / "onnx")
            world.submit(path, *args)
            figures[backend] = timed_command(world.env, BIN / "csvembed", "worker", "--burst", "--backend", backend)
            if backend == "onnx":  # the same file again: every row is skipped, the worker finds nothing
                figures["rerun"] = (timed_command(world.env, BIN / "csvembed", "submit", str(path), *args)
                                    + timed_command(world.env, BIN / "csvembed", "worker", "--burst"))
            world.close()
        runs.append(figures)
        print("  run: " + ", ".join(f"{key} {value:.2f} s" for key, value in figures.items()), flush=True)
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print("\ncold `worker --burst` on 200 queued titles (process start, model load, embed, exit), medians:")
    print(f"  torch {median['torch']:.2f} s, onnx (cached export) {median['onnx']:.2f} s,"
          f" ratio {statistics.median(r['onnx'] / r['torch'] for r in runs):.2f}")
    print(f"  unchanged re-run (submit skips all 200 rows, then worker --burst): {median['rerun']:.2f} s"
          " (target < 2 s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quality-rows", type=int, default=2000)
    parser.add_argument("--only", choices=["speed", "quality", "start"], help="Run one part only.")
    parser.add_argument("--data", choices=["tickets", "titles"], help="Measure speed on one data set only.")
    options = parser.parse_args()
    scratch = scratch_dir("csvembed-onnx-bench-")
    print(f"CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} cores usable")
    settings = Settings(home=scratch, db=str(scratch / "unused.db"), model="all-MiniLM-L6-v2")
    start = time.perf_counter()
    fp32 = load_embedder(settings, backend="onnx")
    print(f"export + check against PyTorch + session: {time.perf_counter() - start:.1f} s (once per model)")
    int8 = load_embedder(Settings(**{**settings.__dict__, "precision": "int8"}), backend="onnx")
    assert isinstance(fp32, OnnxEmbedder) and isinstance(int8, OnnxEmbedder)
    torch_model = SentenceTransformerEmbedder("all-MiniLM-L6-v2")
    if options.only in (None, "quality"):
        quality(options, torch_model, fp32, int8)
    if options.only in (None, "start"):
        start_times(options, scratch)
    if options.only in (None, "speed"):
        speed(options, scratch, torch_model, fp32, int8)


if __name__ == "__main__":
    main()
