"""export: a submission's stored rows with their vectors, in row order, as JSON lines, CSV or Parquet."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from itertools import islice
from typing import BinaryIO

from csvembed.store import Store

FORMATS = ("jsonl", "csv", "parquet")
PARQUET_CHUNK = 10_000


def export(store: Store, submission: str, columns: list[str], fmt: str, dimension: int, out: BinaryIO) -> int:
    """Write every row the submission stored to `out`; returns how many.

    jsonl: one {"collection", "submission", "row_number", "id", "text", "row", "vector"} per line.
    csv: the original columns, then one column per dimension (embedding_0, embedding_1, ...).
    parquet: the original columns, then an `embedding` list column.
    With no row, csv still writes its header and parquet its schema: a valid, empty file.
    """
    rows = store.rows_of_submission(submission)
    collection = store.collection_of(submission)
    if fmt == "jsonl":
        return _jsonl(rows, collection, submission, out)
    if fmt == "csv":
        return _csv(rows, columns, dimension, out)
    return _parquet(rows, columns, out)


def _jsonl(rows: Iterator, collection: str, submission: str, out: BinaryIO) -> int:
    count = 0
    for row_id, number, text, row_json, vector in rows:
        record = {"collection": collection, "submission": submission, "row_number": number, "id": row_id,
                  "text": text, "row": json.loads(row_json), "vector": vector.tolist()}
        out.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        count += 1
    return count


def _csv(rows: Iterator, columns: list[str], dimension: int, out: BinaryIO) -> int:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text)
    writer.writerow([*columns, *(f"embedding_{i}" for i in range(dimension))])
    count = 0
    for _, _, _, row_json, vector in rows:
        row = json.loads(row_json)
        writer.writerow([*(row[column] for column in columns), *(repr(float(x)) for x in vector)])
        count += 1
    text.detach()
    return count


def _parquet(rows: Iterator, columns: list[str], out: BinaryIO) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(column, pa.string()) for column in columns] + [("embedding", pa.list_(pa.float32()))])
    count = 0
    with pq.ParquetWriter(out, schema) as writer:
        while chunk := list(islice(rows, PARQUET_CHUNK)):
            records = [json.loads(row_json) for _, _, _, row_json, _ in chunk]
            data = {column: [record[column] for record in records] for column in columns}
            data["embedding"] = [vector.tolist() for *_, vector in chunk]
            writer.write_table(pa.table(data, schema=schema))
            count += len(chunk)
    return count
