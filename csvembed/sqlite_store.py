"""The SQLite + sqlite-vec store: one file, shared safely by several worker processes on one host.

Identity: a collection holds rows keyed by id (the --id-column value, else the row number). The
`rows` table's UNIQUE(collection, id) owns the rowid, and the vec0 table `vectors` uses the same
rowid. vec0 has no upsert, so a write upserts the row, then deletes and re-inserts its vector, all
in one BEGIN IMMEDIATE transaction: a retried or duplicated job leaves one row and one vector.

apsw is the binding because this Python's stdlib sqlite3 cannot load extensions, and apsw
bundles a current SQLite (3.54) with extension loading; it also leaves transactions to us, which
is what BEGIN IMMEDIATE needs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import apsw
import numpy as np
import sqlite_vec

from csvembed import defaults
from csvembed.errors import InputError, ServiceUnavailable
from csvembed.store import COLUMNS_SAMPLE, LATER_WINS, Hit, StoredRow

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS csvembed_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows(
    rowid INTEGER PRIMARY KEY,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    submission TEXT NOT NULL,
    row_number INTEGER NOT NULL,
    text TEXT NOT NULL,
    row_json TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    stored_at REAL NOT NULL,
    submitted_at REAL NOT NULL DEFAULT 0,
    UNIQUE(collection, id)
);
CREATE INDEX IF NOT EXISTS rows_by_submission ON rows(submission, row_number);
CREATE TABLE IF NOT EXISTS deleted_submissions(submission TEXT PRIMARY KEY, deleted_at REAL NOT NULL);
"""


def _json_path(column: str) -> str:
    """A JSON path that selects one key, whatever characters the column name has."""
    return "$." + json.dumps(column)


def _create_private(path: Path) -> None:
    """Create the database file with mode 0600: the rows are the user's data. SQLite gives the -wal
    and -shm files the database file's mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:  # another process created it first
        pass


def _open(path: Path, read_only: bool) -> apsw.Connection:
    if not read_only:
        return apsw.Connection(str(path))
    connection = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return connection
    except (apsw.ReadOnlyError, apsw.CantOpenError):
        # A WAL database needs its -shm file; a reader that may not create it (a read-only folder)
        # can still read the file alone when no -wal holds newer pages: it is then the whole store.
        connection.close()
        if Path(f"{path}-wal").exists():
            raise
    return apsw.Connection(f"file:{quote(str(path.absolute()))}?immutable=1",
                           flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)


def _connect(path: Path, read_only: bool = False) -> apsw.Connection:
    """A connection with sqlite-vec loaded. A writer creates the file (0600) and sets WAL; a reader
    opens it read-only and writes nothing, so a read-only store can be searched."""
    try:
        if not read_only:
            if not path.parent.is_dir():
                if path.parent.exists():
                    raise ServiceUnavailable(f"cannot use the store {path}: {path.parent} is not a directory")
                path.parent.mkdir(parents=True)
            _create_private(path)
        connection = _open(path, read_only)
        connection.enable_load_extension(True)
        connection.load_extension(sqlite_vec.loadable_path())
        connection.enable_load_extension(False)
        connection.set_busy_timeout(defaults.SQLITE_BUSY_TIMEOUT_MS)
        if not read_only:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
    except (apsw.CantOpenError, apsw.ReadOnlyError, apsw.NotADBError, apsw.IOError, OSError) as exc:
        raise ServiceUnavailable(f"cannot use the store {path}: {exc}") from None
    return connection


class SqliteStore:
    """One instance per process; it owns one connection."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.connection = _connect(path, read_only)
        # False only for a reader that found a file without csvembed's tables (nothing stored yet).
        self.has_schema = True
        self._check_or_create_schema()

    @classmethod
    def open_existing(cls, path: Path) -> SqliteStore | None:
        """The store if its file exists; readers use this so they never create an empty one."""
        return cls(path) if path.exists() else None

    def _check_or_create_schema(self) -> None:
        try:
            tables = {name for (name,) in self.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "csvembed_meta" not in tables:
                raise ServiceUnavailable(f"{self.path} is not a csvembed database (it has other tables)")
            if self.read_only:
                self.has_schema = bool(tables)
                return
            with self._immediate():
                self.connection.execute(SCHEMA)
                columns = {name for _, name, *_ in self.connection.execute("PRAGMA table_info(rows)")}
                if "submitted_at" not in columns:  # a store written before submissions were ordered
                    self.connection.execute("ALTER TABLE rows ADD COLUMN submitted_at REAL NOT NULL DEFAULT 0")
                self.connection.execute(
                    "INSERT OR IGNORE INTO csvembed_meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
        except (apsw.NotADBError, apsw.ReadOnlyError, apsw.CantOpenError, apsw.IOError) as exc:
            raise ServiceUnavailable(f"cannot use the store {self.path}: {exc}") from None

    @contextmanager
    def _immediate(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the write lock up front: a plain BEGIN that reads and then writes
        # fails with "database is locked" under concurrent writers instead of waiting.
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        found = self.connection.execute("SELECT value FROM csvembed_meta WHERE key = ?", (key,)).fetchone()
        return found[0] if found else None

    @property
    def dimension(self) -> int | None:
        value = self._meta("dimension")
        return int(value) if value else None

    def _ensure_vectors_table(self, dimension: int) -> None:
        """The vec0 table's dimension is fixed by the first model that writes to the store."""
        existing = self.dimension
        if existing is None:
            self.connection.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS vectors USING vec0("
                f"embedding float[{dimension}] distance_metric=cosine, collection text, submission text)"
            )
            self.connection.execute("INSERT INTO csvembed_meta(key, value) VALUES ('dimension', ?)", (str(dimension),))
        elif existing != dimension:
            raise InputError(
                f"the store {self.path} holds {existing}-dimensional vectors, but the model gives {dimension}:"
                " use another --db for another model"
            )

    def write(self, rows: Sequence[StoredRow], vectors: np.ndarray) -> None:
        """Store rows and their vectors in one transaction; re-writing a row replaces it."""
        now = time.time()
        with self._immediate():
            self._ensure_vectors_table(vectors.shape[1])
            # A submission deleted while a worker held its rows: BEGIN IMMEDIATE orders this check
            # against the delete's transaction, so nothing of it is written after the delete.
            deleted = self._deleted({row.submission for row in rows})
            for row, vector in zip(rows, vectors, strict=True):
                if row.submission in deleted:
                    continue
                # The row of the later submission wins, and within one submission the later row of a
                # duplicated id, whatever order the workers took them in.
                written = self.connection.execute(
                    "INSERT INTO rows(collection, id, submission, row_number, text, row_json, content_hash, model,"
                    " stored_at, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(collection, id) DO UPDATE SET submission = excluded.submission,"
                    " row_number = excluded.row_number, text = excluded.text, row_json = excluded.row_json,"
                    " content_hash = excluded.content_hash, model = excluded.model, stored_at = excluded.stored_at,"
                    " submitted_at = excluded.submitted_at"
                    f" WHERE {LATER_WINS.format(stored='rows')}"
                    " RETURNING rowid",
                    (row.collection, row.id, row.submission, row.row_number, row.text, row.row_json,
                     row.content_hash, row.model, now, row.submitted_at),
                ).fetchone()
                if written is None:  # superseded by a later row with the same id
                    continue
                self.connection.execute("DELETE FROM vectors WHERE rowid = ?", written)
                self.connection.execute(
                    "INSERT INTO vectors(rowid, embedding, collection, submission) VALUES (?, ?, ?, ?)",
                    (written[0], np.ascontiguousarray(vector, dtype=np.float32).tobytes(), row.collection,
                     row.submission),
                )

    def _deleted(self, submissions: set[str]) -> set[str]:
        """Which of these submissions were deleted (their tombstones are kept for good)."""
        marks = ",".join("?" * len(submissions))
        return {submission for (submission,) in self.connection.execute(
            f"SELECT submission FROM deleted_submissions WHERE submission IN ({marks})", tuple(submissions))}

    def stored_hashes(self, collection: str, ids: Sequence[str]) -> dict[str, str]:
        """The content hash of each of these ids already stored in the collection."""
        found: dict[str, str] = {}
        # SQLite allows 32766 parameters; stay far below.
        for start in range(0, len(ids), 900):
            part = ids[start : start + 900]
            marks = ",".join("?" * len(part))
            found.update(
                self.connection.execute(
                    f"SELECT id, content_hash FROM rows WHERE collection = ? AND id IN ({marks})", (collection, *part)
                )
            )
        return found

    def search(
        self,
        query: np.ndarray,
        k: int,
        collection: str | None = None,
        submission: str | None = None,
        where: dict[str, str] | None = None,
    ) -> list[Hit]:
        """The k nearest rows by cosine distance, nearest first, within the filters given.

        collection and submission are vec0 metadata columns, filtered inside the KNN scan. A
        `where` on original columns selects rows first, then ranks exactly those rows.
        """
        if self.dimension is None:
            return []
        vector = np.ascontiguousarray(query, dtype=np.float32).tobytes()
        filters, params = "", []
        for column, value in (("collection", collection), ("submission", submission)):
            if value is not None:
                filters += f" AND {column} = ?"
                params.append(value)
        if where:
            for column, value in where.items():
                filters += " AND rowid IN (SELECT rowid FROM rows WHERE json_extract(row_json, ?) = ?)"
                params += [_json_path(column), value]
            nearest = (f"SELECT rowid, vec_distance_cosine(embedding, ?) AS distance FROM vectors"
                       f" WHERE 1{filters} ORDER BY distance LIMIT ?")
            params = [vector, *params, k]
        else:
            # sqlite-vec KNN must be written `MATCH ? AND k = ?`: the LIMIT form fails on older SQLite.
            nearest = f"SELECT rowid, distance FROM vectors WHERE embedding MATCH ? AND k = ?{filters}"
            params = [vector, k, *params]
        found = self.connection.execute(
            "SELECT r.collection, r.submission, r.row_number, r.id, v.distance, r.text, r.row_json"
            f" FROM ({nearest}) v JOIN rows r ON r.rowid = v.rowid ORDER BY v.distance",
            params,
        )
        return [Hit(c, s, n, i, d, t, json.loads(j)) for c, s, n, i, d, t, j in found]

    def collections(self) -> list[str]:
        """The collections that hold stored rows, by name."""
        return [name for (name,) in self.connection.execute("SELECT DISTINCT collection FROM rows ORDER BY 1")]

    def columns(self, collection: str | None = None) -> list[str]:
        """The original columns of a sample of the stored rows (of one collection), sorted: for messages."""
        scope, params = ("WHERE collection = ?", (collection,)) if collection is not None else ("", ())
        found = self.connection.execute(
            f"SELECT key FROM (SELECT row_json FROM rows {scope} LIMIT ?) AS sample,"
            " json_each(sample.row_json)", (*params, COLUMNS_SAMPLE))
        return sorted({key for (key,) in found})

    def has_column(self, column: str, collection: str | None = None) -> bool:
        """Whether any stored row (of one collection) has this original column: exact, not sampled."""
        scope, params = (" AND collection = ?", (collection,)) if collection is not None else ("", ())
        found = self.connection.execute(
            f"SELECT 1 FROM rows WHERE json_type(row_json, ?) IS NOT NULL{scope} LIMIT 1",
            (_json_path(column), *params)).fetchone()
        return found is not None

    def rows_of_submission(self, submission: str) -> Iterator[tuple[str, int, str, str, np.ndarray]]:
        """(id, row_number, text, row_json, vector) of the rows a submission last wrote, in row order."""
        found = self.connection.execute(
            "SELECT r.id, r.row_number, r.text, r.row_json, v.embedding FROM rows r"
            " JOIN vectors v ON v.rowid = r.rowid WHERE r.submission = ? ORDER BY r.row_number",
            (submission,),
        )
        for row_id, number, text, row_json_text, embedding in found:
            yield row_id, number, text, row_json_text, np.frombuffer(embedding, dtype=np.float32)

    def collection_of(self, submission: str) -> str:
        found = self.connection.execute("SELECT collection FROM rows WHERE submission = ? LIMIT 1",
                                        (submission,)).fetchone()
        return found[0] if found else ""

    def delete_submission(self, submission: str) -> int:
        """Remove the rows (and vectors) last written by a submission; returns how many.

        The tombstone, in the same transaction, makes every later write of its rows a no-op.
        """
        with self._immediate():
            self.connection.execute("INSERT OR REPLACE INTO deleted_submissions(submission, deleted_at) VALUES (?, ?)",
                                    (submission, time.time()))
            rowids = [rowid for (rowid,) in self.connection.execute(
                "SELECT rowid FROM rows WHERE submission = ?", (submission,))]
            if self.dimension is not None:
                self.connection.executemany("DELETE FROM vectors WHERE rowid = ?", [(r,) for r in rowids])
            self.connection.execute("DELETE FROM rows WHERE submission = ?", (submission,))
        return len(rowids)

    def counts(self) -> tuple[int, int]:
        """(rows, vectors): equal in a healthy store."""
        (rows,) = self.connection.execute("SELECT count(*) FROM rows").fetchone()
        vectors = 0
        if self.dimension is not None:
            (vectors,) = self.connection.execute("SELECT count(*) FROM vectors").fetchone()
        return rows, vectors

    def close(self) -> None:
        self.connection.close()
