"""The store interface and what every backend shares: the row to write, the hit found, the hashes.

Backends: store.sqlite (a file with sqlite-vec, the default) and store.postgres (PostgreSQL with
pgvector, for many hosts) import this module, never the package, so there is no import cycle.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Protocol

import numpy as np

from csvembed.errors import InputError

# How many stored rows `columns()` samples to list a collection's columns in a message.
COLUMNS_SAMPLE = 1000


def content_hash(model: str, text: str, row_json: str, reading: str = "") -> str:
    """What decides whether a stored row is unchanged: the model, the embedded text and the row, and
    for a text longer than the model's window how it was read (see `reading`).

    The BLAKE2b-128 of each part's UTF-8 followed by a NUL byte (one string, one call: it runs per row).
    """
    joined = f"{model}\x00{text}\x00{row_json}\x00{reading}\x00" if reading else f"{model}\x00{text}\x00{row_json}\x00"
    return blake2b(joined.encode(), digest_size=16).hexdigest()


def reading(long_text: str, overlap: int) -> str:
    """How a long text is read under a policy. It is part of a long row's hash only: a re-submit with
    another policy re-embeds the rows it changes, and no row that fits the model's window."""
    return f"window/{overlap}" if long_text == "window" else long_text


# json.dumps with any option builds a new encoder per call, and JSONEncoder.encode a new C encoder: the C
# encoder that JSONEncoder(ensure_ascii=False).encode uses is built once here (it runs per row).
_ROW_ENCODER = json.JSONEncoder(ensure_ascii=False)
_C_ENCODER = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, _ROW_ENCODER.default, json.encoder.encode_basestring, None, _ROW_ENCODER.key_separator,
    _ROW_ENCODER.item_separator, False, False, True)


def row_json(columns: Sequence[str], values: Sequence[str]) -> str:
    if _C_ENCODER is None:
        return _ROW_ENCODER.encode(dict(zip(columns, values)))
    return "".join(_C_ENCODER(dict(zip(columns, values)), 0))


# When an upsert may replace the stored row: a later submission, or within one submission a later row.
LATER_WINS = ("excluded.submitted_at > {stored}.submitted_at OR (excluded.submitted_at = {stored}.submitted_at"
              " AND ({stored}.submission != excluded.submission OR excluded.row_number >= {stored}.row_number))")

@dataclass(slots=True)
class StoredRow:
    """A row ready to be written, with everything the store keeps about it."""

    collection: str
    id: str
    submission: str
    row_number: int
    text: str
    row_json: str
    model: str
    # When the row's submission was created (Redis' clock): a row of an older submission never
    # replaces one of a newer submission, whatever order workers store them in.
    submitted_at: float = 0.0
    # The (start, end) character spans of its windows, one vector each; None: one window, all of the text.
    spans: list[tuple[int, int]] | None = None
    # How its text was read when it did not fit the model's window (`reading`); "" when it did.
    reading: str = ""

    @property
    def content_hash(self) -> str:
        return content_hash(self.model, self.text, self.row_json, self.reading)

    @property
    def windows(self) -> list[tuple[int, int]]:
        return self.spans if self.spans is not None else [(0, len(self.text))]


@dataclass
class Hit:
    """One search result, as `search --json` prints it."""

    collection: str
    submission: str
    row_number: int
    id: str
    distance: float
    text: str
    row: dict
    # The window that matched: {"start", "end"} character offsets in `text`.
    match: dict[str, int] | None = None


def other_model(collection: str, stored: str, model: str) -> InputError:
    """Why rows of `model` may not go into a collection of `stored`: vectors of two models (even of one
    dimension) are not comparable, and a write would silently replace rows of the other model."""
    return InputError(f"the collection {collection!r} holds rows of the model {stored}, not {model}: use another"
                      f" --collection, or delete the collection first (csvembed delete --collection {collection})")


def row_vector(windows: np.ndarray) -> np.ndarray:
    """One vector for a row: its only window's, or the normalised mean of its windows."""
    if len(windows) == 1:
        return windows[0]
    mean = windows.mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


class Store(Protocol):
    """What the producer, the worker, search, export and delete need from a backend."""

    path: object  # how messages name the store

    @property
    def dimension(self) -> int | None: ...

    def write(self, rows: Sequence[StoredRow], vectors: np.ndarray) -> None:
        """Store rows and their windows' vectors (stacked in row order) in one transaction; re-writing an
        id replaces the row and all of its windows (later row wins)."""

    def rejected(self, error: Exception) -> str | None:
        """The one-line reason when `error` (raised by `write`) is the store refusing the rows' data, which
        the same rows would meet again; None for anything else (an outage, a lock), which may pass."""

    def stored_hashes(self, collection: str, ids: Sequence[str]) -> dict[str, str]: ...

    def models(self, collection: str | None = None) -> dict[str, str]:
        """The model of each collection (of this one only, if given): every row of a collection has one."""

    def search(self, query: np.ndarray, k: int, collection: str | None = None, submission: str | None = None,
               where: dict[str, str] | None = None) -> list[Hit]: ...

    def rows_of_submission(self, submission: str) -> Iterator[tuple[str, int, str, str, np.ndarray]]:
        """(id, row_number, text, row_json, row_vector) of a submission's rows, in row order."""

    def windows_of_submission(
        self, submission: str
    ) -> Iterator[tuple[str, int, str, str, list[tuple[int, int]], np.ndarray]]:
        """(id, row_number, text, row_json, spans, one vector per span) of a submission's rows, in row order."""

    def collection_of(self, submission: str) -> str: ...

    def collections(self) -> list[str]:
        """The collections that hold stored rows."""

    def columns(self, collection: str | None = None) -> list[str]:
        """The original columns of a sample of the stored rows, sorted, for messages."""

    def has_column(self, column: str, collection: str | None = None) -> bool:
        """Whether any stored row has this original column (exact)."""

    def delete_submission(self, submission: str) -> int: ...

    def delete_collection(self, collection: str) -> int:
        """Remove every row of a collection, whichever submission wrote it; returns how many."""

    def counts(self) -> tuple[int, int]:
        """(rows, windows); windows whose row is gone are counted too, so orphans show."""

    def close(self) -> None: ...
