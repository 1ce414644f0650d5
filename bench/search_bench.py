"""Search latency over many stored rows: sqlite-vec brute force, with and without filters.

    .venv/bin/python bench/search_bench.py [--rows 100000] [--queries 30] [--windows 1]

--windows N stores every row as N windows (N vectors), as long text under `--long-text window` is:
search then ranks rows by their best window and returns each row once.

Rows get random unit vectors (no model needed to fill the store); queries are random unit
vectors too, so the figure is the store's own time, without embedding the query (the model adds
about 10 ms for a short query).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from datasets import scratch_dir

from csvembed.store import Store, StoredRow, open_store, row_json

COLOURS = ["red", "blue", "green", "black", "white"]


def fill(store: Store, rows: int, dimension: int, windows: int, rng: np.random.Generator) -> None:
    for start in range(0, rows, 5000):
        count = min(5000, rows - start)
        vectors = rng.standard_normal((count * windows, dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        batch = [
            StoredRow(collection=f"c{n % 10}", id=str(n), submission="bench", row_number=n, text="w" * windows,
                      row_json=row_json(["n", "colour"], [str(n), COLOURS[n % 5]]), model="random",
                      spans=[(i, i + 1) for i in range(windows)] if windows > 1 else None)
            for n in range(start + 1, start + count + 1)
        ]
        store.write(batch, vectors)


def timed(store: Store, queries: np.ndarray, **filters) -> tuple[float, float]:
    times = []
    for query in queries:
        start = time.perf_counter()
        hits = store.search(query, 10, **filters)
        times.append((time.perf_counter() - start) * 1000)
        assert len(hits) == 10
    return statistics.median(times), sorted(times)[int(len(times) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--windows", type=int, default=1, help="Windows (vectors) per row.")
    options = parser.parse_args()
    rng = np.random.default_rng(0)
    store = open_store(str(scratch_dir("csvembed-search-") / "store.db"))
    start = time.perf_counter()
    fill(store, options.rows, 384, options.windows, rng)
    print(f"filled {options.rows:,} rows of {options.windows} windows in {time.perf_counter() - start:.1f} s")
    queries = rng.standard_normal((options.queries, 384)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    store.search(queries[0], 10)  # warm the page cache
    for label, filters in (("k=10, no filter", {}), ("k=10, one collection (1/10 of rows)", {"collection": "c3"}),
                           ("k=10, --where colour=red (1/5 of rows)", {"where": {"colour": "red"}})):
        median, p95 = timed(store, queries, **filters)
        print(f"{label:<42} median {median:7.1f} ms   p95 {p95:7.1f} ms")


if __name__ == "__main__":
    main()
