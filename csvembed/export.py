"""export: a submission's stored rows with their vectors, in row order, as JSON lines, CSV or Parquet.

One vector per row: a row embedded in windows gets the normalised mean of its windows. With
`windows`, one record per window instead, with its index and character span in the row's text.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from itertools import islice
from typing import BinaryIO

import numpy as np

from csvembed.store import Store

FORMATS = ("jsonl", "csv", "parquet")
PARQUET_CHUNK = 10_000
# What a window record adds, after the original columns in csv and parquet.
WINDOW_FIELDS = ("window", "window_start", "window_end")

# (id, row_number, text, row_json, (window, start, end) or None for a whole row, vector)
Record = tuple[str, int, str, str, "tuple[int, int, int] | None", np.ndarray]


def export(
    store: Store, submission: str, columns: list[str], fmt: str, dimension: int, out: BinaryIO, windows: bool = False
) -> int:
    """Write every row (or, with windows, every window) the submission stored to `out`; returns how many.

    jsonl: one {"collection", "submission", "row_number", "id", "text", "row", "vector"} per line, with
    "window", "start" and "end" for a window. csv: the original columns, the window fields, then one
    column per dimension (embedding_0, embedding_1, ...). parquet: the original columns, the window
    fields, then an `embedding` list column. With no row, csv still writes its header and parquet its
    schema: a valid, empty file.
    """
    records = _windows(store, submission) if windows else _rows(store, submission)
    if fmt == "jsonl":
        return _jsonl(records, store.collection_of(submission), submission, out)
    if fmt == "csv":
        return _csv(records, columns, dimension, windows, out)
    return _parquet(records, columns, windows, out)


def _rows(store: Store, submission: str) -> Iterator[Record]:
    for row_id, number, text, row_json, vector in store.rows_of_submission(submission):
        yield row_id, number, text, row_json, None, vector


def _windows(store: Store, submission: str) -> Iterator[Record]:
    for row_id, number, text, row_json, spans, vectors in store.windows_of_submission(submission):
        for index, ((start, end), vector) in enumerate(zip(spans, vectors)):
            yield row_id, number, text, row_json, (index, start, end), vector


def _jsonl(records: Iterator[Record], collection: str, submission: str, out: BinaryIO) -> int:
    count = 0
    for row_id, number, text, row_json, window, vector in records:
        record = {"collection": collection, "submission": submission, "row_number": number, "id": row_id,
                  "text": text, "row": json.loads(row_json)}
        if window is not None:
            record.update(zip(("window", "start", "end"), window))
        record["vector"] = vector.tolist()
        out.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        count += 1
    return count


def _csv(records: Iterator[Record], columns: list[str], dimension: int, windows: bool, out: BinaryIO) -> int:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text)
    writer.writerow([*columns, *(WINDOW_FIELDS if windows else ()), *(f"embedding_{i}" for i in range(dimension))])
    count = 0
    for _, _, _, row_json, window, vector in records:
        row = json.loads(row_json)
        writer.writerow([*(row[column] for column in columns), *(window or ()), *(repr(float(x)) for x in vector)])
        count += 1
    text.detach()
    return count


def _parquet(records: Iterator[Record], columns: list[str], windows: bool, out: BinaryIO) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    extra = [(name, pa.int64()) for name in WINDOW_FIELDS] if windows else []
    schema = pa.schema([(column, pa.string()) for column in columns] + extra
                       + [("embedding", pa.list_(pa.float32()))])
    count = 0
    with pq.ParquetWriter(out, schema) as writer:
        while chunk := list(islice(records, PARQUET_CHUNK)):
            rows = [json.loads(row_json) for _, _, _, row_json, _, _ in chunk]
            data = {column: [row[column] for row in rows] for column in columns}
            for i, (name, _) in enumerate(extra):
                data[name] = [window[i] for *_, window, _ in chunk]
            data["embedding"] = [vector.tolist() for *_, vector in chunk]
            writer.write_table(pa.table(data, schema=schema))
            count += len(chunk)
    return count
