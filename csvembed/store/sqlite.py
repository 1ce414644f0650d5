"""The SQLite + sqlite-vec store: one file, shared safely by several worker processes on one host.

Identity: a collection holds rows keyed by id (the --id-column value, else the row number). The
`rows` table's UNIQUE(collection, id) owns the rowid; a row's windows live in the vec0 table
`window_vectors` at rowids (row rowid << WINDOW_BITS) + window index, with their character spans as
auxiliary columns, and `rows.windows` says how many there are. vec0 has no upsert, so a write
upserts the row, then deletes all of its old windows and inserts the new ones, in one BEGIN
IMMEDIATE transaction: a retried or duplicated job leaves one row and its windows, and a row that
shrinks loses its extra windows. Stores made before windows (a vec0 table `vectors` keyed by the
row's rowid) are migrated when first opened for writing: each vector becomes its row's one window.

apsw is the binding because this Python's stdlib sqlite3 cannot load extensions, and apsw
bundles a current SQLite (3.54) with extension loading; it also leaves transactions to us, which
is what BEGIN IMMEDIATE needs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
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
from csvembed.store.base import COLUMNS_SAMPLE, LATER_WINS, Hit, StoredRow, other_model, row_vector
from csvembed.windows import MAX_WINDOWS

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
# A window's rowid is (row rowid << WINDOW_BITS) + its index, so a row's windows need no table of their own.
WINDOW_BITS = 10
assert MAX_WINDOWS <= 1 << WINDOW_BITS
# Vectors per vec0 chunk (sqlite-vec's default: 1024). Each insert writes its vector into the chunk's blob, and
# SQLite walks the blob's overflow pages up to that offset: a chunk a quarter as long costs a store of short rows
# about 4 µs a row less (of ~31), and a search as much as before. Stores made with another size keep theirs.
CHUNK_SIZE = 256
# sqlite-vec refuses a KNN query for more neighbours than this.
KNN_LIMIT = 4096
# Search asks for this many windows per row wanted, more while windows of the same rows crowd them out.
OVERSAMPLE = 4
# Once rows were written, the WAL is checkpointed when it holds this many pages (SQLite's own default), on a
# thread of the writer's own (_Checkpointer): inside COMMIT, as SQLite does it, the checkpoint's copy and fsyncs
# cost a store of short rows ~4 µs a row of a worker's time. Should that thread fall this far behind (a checkpoint
# that never catches up with the writes), the writer checkpoints itself after its commit: the WAL stays bounded.
CHECKPOINT_PAGES = 1000
CHECKPOINT_BEHIND_PAGES = 8 * CHECKPOINT_PAGES

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
    windows INTEGER NOT NULL DEFAULT 1,
    UNIQUE(collection, id)
);
CREATE INDEX IF NOT EXISTS rows_by_submission ON rows(submission, row_number);
CREATE TABLE IF NOT EXISTS deleted_submissions(submission TEXT PRIMARY KEY, deleted_at REAL NOT NULL);
"""


_STORED_ROW = "SELECT collection, id, rowid, windows FROM rows WHERE collection = ? AND id = ?"
_UPSERT_ROW = (
    "INSERT INTO rows(collection, id, submission, row_number, text, row_json, content_hash, model,"
    " stored_at, submitted_at, windows) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(collection, id) DO UPDATE SET submission = excluded.submission,"
    " row_number = excluded.row_number, text = excluded.text, row_json = excluded.row_json,"
    " content_hash = excluded.content_hash, model = excluded.model, stored_at = excluded.stored_at,"
    " submitted_at = excluded.submitted_at, windows = excluded.windows"
    f" WHERE {LATER_WINS.format(stored='rows')}"
    " RETURNING rowid, collection, id"
)
# A new id is inserted; one already stored is left for the upsert (which needs its old window count first).
# No RETURNING: it cost a short row ~2.5 µs (of ~22 for its whole write); the rowids are known without it.
_INSERT_NEW_ROW = _UPSERT_ROW[:_UPSERT_ROW.index(" DO UPDATE")] + " DO NOTHING"
_UPDATE_WINDOW = "UPDATE window_vectors SET embedding = ?, submission = ?, char_start = ?, char_end = ? WHERE rowid = ?"
_INSERT_WINDOW = ("INSERT INTO window_vectors(rowid, embedding, collection, submission, char_start, char_end)"
                  " VALUES (?, ?, ?, ?, ?, ?)")


def _window_ids(rowid: int, count: int) -> list[tuple[int]]:
    return [((rowid << WINDOW_BITS) + index,) for index in range(count)]


def _vector_table(dimension: int) -> str:
    return (f"CREATE VIRTUAL TABLE window_vectors USING vec0(embedding float[{dimension}] distance_metric=cosine,"
            f" collection text, submission text, +char_start integer, +char_end integer, chunk_size={CHUNK_SIZE})")


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


class _Checkpointer:
    """PASSIVE checkpoints on a daemon thread with a connection of its own, when asked: PASSIVE never waits
    for (nor blocks) a reader or a writer of any process, and a checkpoint cut short by a kill -9 loses
    nothing (the WAL still holds every commit)."""

    def __init__(self, path: Path) -> None:
        # Never created here: a store removed while its writer runs would come back with the umask's mode.
        self._connection = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
        self._connection.execute("PRAGMA journal_mode").fetchall()  # a connection finds the WAL at its first read
        self._due = threading.Event()
        self._running = threading.Lock()  # one checkpoint at a time, whichever thread runs it
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="csvembed-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._due.set()

    def _serve(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._closing:
                return
            self.checkpoint()

    def checkpoint(self) -> None:
        """A PASSIVE checkpoint on the caller's thread, once the one in flight (if any) is done. Skipped when
        another process checkpoints, or the store is unreachable: the next commit over the threshold asks again."""
        with self._running:
            try:
                self._connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
            except apsw.Error as exc:
                log.debug("checkpoint skipped: %s", exc)

    def close(self) -> None:
        self._closing = True
        self._due.set()
        self._thread.join()
        self._connection.close()


class SqliteStore:
    """One instance per process; it owns one connection (and, once it wrote rows, a checkpointer's)."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.connection = _connect(path, read_only)
        # False only for a reader that found a file without csvembed's tables (nothing stored yet).
        self.has_schema = True
        self._checkpointer: _Checkpointer | None = None  # started by the first write of rows
        self._wal_pages = 0  # pages in the WAL after this connection's last commit
        self._check_or_create_schema()
        if read_only and self._legacy():
            self.connection.close()
            SqliteStore(path).close()  # migrates, if this process may write the file
            self.connection = _connect(path, read_only)

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
                if "windows" not in columns:  # a store written before windows: one vector per row
                    self.connection.execute("ALTER TABLE rows ADD COLUMN windows INTEGER NOT NULL DEFAULT 1")
                if self._legacy():
                    self._migrate_vectors()
                self.connection.execute(
                    "INSERT OR IGNORE INTO csvembed_meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
        except (apsw.NotADBError, apsw.ReadOnlyError, apsw.CantOpenError, apsw.IOError) as exc:
            raise ServiceUnavailable(f"cannot use the store {self.path}: {exc}") from None

    def _legacy(self) -> bool:
        """Whether the vectors are still in the one-per-row table of stores made before windows."""
        return self.connection.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'vectors' AND type = 'table'").fetchone() is not None

    def _migrate_vectors(self) -> None:
        """Each row's vector becomes its one window, spanning its whole text (inside the schema transaction)."""
        self.connection.execute(_vector_table(self.dimension))
        self.connection.execute(
            f"INSERT INTO window_vectors(rowid, embedding, collection, submission, char_start, char_end)"
            f" SELECT v.rowid << {WINDOW_BITS}, v.embedding, v.collection, v.submission, 0, length(r.text)"
            " FROM vectors v JOIN rows r ON r.rowid = v.rowid")
        self.connection.execute("DROP TABLE vectors")

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
            self.connection.execute(_vector_table(dimension))
            self.connection.execute("INSERT INTO csvembed_meta(key, value) VALUES ('dimension', ?)", (str(dimension),))
        elif existing != dimension:
            raise InputError(
                f"the store {self.path} holds {existing}-dimensional vectors, but the model gives {dimension}:"
                " use another --db for another model"
            )

    def write(self, rows: Sequence[StoredRow], vectors: np.ndarray) -> None:
        """Store rows and their windows' vectors (stacked in row order) in one transaction; re-writing a
        row replaces it and all of its windows."""
        now = time.time()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._checkpointer is None:
            self._checkpointer = _Checkpointer(self.path)
            self.connection.set_wal_hook(self._count_wal)  # replaces SQLite's automatic checkpoint
        with self._immediate():
            self._ensure_vectors_table(vectors.shape[1])
            for collection, model in sorted({(row.collection, row.model) for row in rows}):
                stored = self._model_of(collection)
                if stored is not None and stored != model:
                    raise other_model(collection, stored, model)
            # A submission deleted while a worker held its rows: BEGIN IMMEDIATE orders this check
            # against the delete's transaction, so nothing of it is written after the delete.
            deleted = self._deleted({row.submission for row in rows})
            # (row, index of its first window's vector), for the rows still to write.
            live: list[tuple[StoredRow, int]] = []
            first = 0
            for row in rows:
                if row.submission not in deleted:
                    live.append((row, first))
                first += len(row.spans) if row.spans is not None else 1
            if first != len(vectors):
                raise ValueError(f"{len(vectors)} vectors for {first} windows")
            blob = vectors.tobytes()  # one copy; each window's vector is a slice of it
            if len({(row.collection, row.id) for row, _ in live}) == len(live):
                self._write_rows(live, blob, vectors.shape[1] * 4, now)
            else:  # an id twice in one batch: row by row, so that the later of them wins
                for row, at in live:
                    self._write_rows([(row, at)], blob, vectors.shape[1] * 4, now)
        self._checkpoint_aside()

    def _count_wal(self, _connection: apsw.Connection, _name: str, pages: int) -> int:
        """The WAL hook: SQLite calls it inside each COMMIT with the pages the WAL holds."""
        self._wal_pages = pages
        return apsw.SQLITE_OK

    def _checkpoint_aside(self) -> None:
        """After a commit: have the checkpointer copy a full WAL into the database, or copy it here if it fell far
        behind. The rows are committed either way, so a failed checkpoint is no failure of the write."""
        if self._wal_pages >= CHECKPOINT_BEHIND_PAGES:
            self._checkpointer.checkpoint()
        elif self._wal_pages >= CHECKPOINT_PAGES:
            self._checkpointer.request()

    def rejected(self, error: Exception) -> str | None:
        """A value over SQLite's length limit (a billion bytes by default), or a constraint a row breaks;
        a lock or an I/O error is no fault of the rows."""
        if isinstance(error, (apsw.TooBigError, apsw.ConstraintError)):
            return str(error).strip().split("\n")[0] or type(error).__name__
        return None

    def _write_rows(self, rows: list[tuple[StoredRow, int]], blob: bytes, size: int, now: float) -> None:
        """Upsert rows of distinct ids and replace the windows of those written: a few statements per batch
        (the statements' own cost, mostly vec0's insert, is most of a fast model's worker CPU per row).

        `rows`: (row, index of its first window's vector); window i's vector is blob[i * size:(i + 1) * size].
        """
        keys = [(row.collection, row.id) for row, _ in rows]
        values = [(row.collection, row.id, row.submission, row.row_number, row.text, row.row_json, row.content_hash,
                   row.model, now, row.submitted_at, len(row.spans) if row.spans is not None else 1)
                  for row, _ in rows]
        # New ids first (most rows): one statement each. The write lock is held, so the ids this leaves out are
        # exactly those stored before, and their old window counts are still theirs.
        (largest,) = self.connection.execute("SELECT coalesce(max(rowid), 0) FROM rows").fetchone()
        changes = self.connection.total_changes()
        self.connection.executemany(_INSERT_NEW_ROW, values)
        before: dict[tuple[str, str], int] = {}
        if (self.connection.total_changes() - changes == len(values)
                and self.connection.last_insert_rowid() == largest + len(values)):
            # Every id was new: SQLite gives a new row the rowid after the largest, so they got the next ones in order.
            written = dict(zip(keys, range(largest + 1, largest + 1 + len(values))))
        else:
            found = list(self.connection.executemany(_STORED_ROW, keys))
            written = {(collection, row_id): rowid for collection, row_id, rowid, _ in found if rowid > largest}
            before = {(collection, row_id): windows for collection, row_id, rowid, windows in found
                      if rowid <= largest}
            stored = [value for key, value in zip(keys, values) if key in before]
            # The row of the later submission wins, and within one submission the later row of a duplicated
            # id, whatever order the workers took them in: a row superseded so returns nothing.
            written |= {(collection, row_id): rowid for rowid, collection, row_id in
                        self.connection.executemany(_UPSERT_ROW, stored)}
        # A replaced row's windows are updated in place as far as both old and new go (vec0's UPDATE costs half
        # its DELETE and INSERT), its extra old ones deleted; a new row (a rowid without windows: a deleted row
        # took its windows along) and a row that grew get INSERTs.
        updates, deletes, inserts = [], [], []
        for (row, at), key in zip(rows, keys):
            rowid = written.get(key)
            if rowid is None:
                continue
            base = rowid << WINDOW_BITS
            old = before.get(key)
            windows = row.windows
            if old is None and len(windows) == 1:  # most rows: new, in one window
                start, end = windows[0]
                inserts.append((base, blob[at * size:(at + 1) * size], row.collection, row.submission, start, end))
                continue
            kept = min(old or 0, len(windows))
            for index, (start, end) in enumerate(windows, start=at):
                vector = blob[index * size:(index + 1) * size]
                window_id = base + index - at
                if index - at < kept:
                    updates.append((vector, row.submission, start, end, window_id))
                else:
                    inserts.append((window_id, vector, row.collection, row.submission, start, end))
            if old is not None:
                deletes += _window_ids(rowid, old)[len(windows):]
        if deletes:
            self.connection.executemany("DELETE FROM window_vectors WHERE rowid = ?", deletes)
        if updates:
            self.connection.executemany(_UPDATE_WINDOW, updates)
        self.connection.executemany(_INSERT_WINDOW, inserts)

    def _model_of(self, collection: str) -> str | None:
        """The model of a collection's rows (all of them have one): one index lookup."""
        found = self.connection.execute("SELECT model FROM rows WHERE collection = ? LIMIT 1", (collection,)).fetchone()
        return found[0] if found else None

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
        """The k rows whose best window is nearest by cosine distance, nearest first, within the filters.

        collection and submission are vec0 metadata columns, filtered inside the KNN scan, which asks
        for more windows than k until k distinct rows are found (or sqlite-vec's limit of KNN_LIMIT
        windows is reached). A `where` on original columns selects rows first, then ranks exactly
        those rows' windows.
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
                filters += (f" AND rowid >> {WINDOW_BITS} IN (SELECT rowid FROM rows"
                            " WHERE json_extract(row_json, ?) = ?)")
                params += [_json_path(column), value]
            # SQLite takes the bare columns of a min() aggregate from the row that has the minimum.
            best = list(self.connection.execute(
                f"SELECT rowid >> {WINDOW_BITS} AS row, min(vec_distance_cosine(embedding, ?)) AS distance,"
                f" char_start, char_end FROM window_vectors WHERE 1{filters} GROUP BY row ORDER BY distance LIMIT ?",
                [vector, *params, k]))
        else:
            best = self._nearest_rows(vector, k, filters, params)
        return self._hits(best)

    def _nearest_rows(self, vector: bytes, k: int, filters: str, params: list) -> list[tuple[int, float, int, int]]:
        """(row rowid, distance, start, end) of the best window of the k nearest rows, nearest first."""
        wanted = min(k * OVERSAMPLE, KNN_LIMIT)
        while True:
            # sqlite-vec KNN must be written `MATCH ? AND k = ?`: the LIMIT form fails on older SQLite.
            found = self.connection.execute(
                "SELECT rowid, distance, char_start, char_end FROM window_vectors"
                f" WHERE embedding MATCH ? AND k = ?{filters} ORDER BY distance", [vector, wanted, *params]).fetchall()
            best: dict[int, tuple[int, float, int, int]] = {}
            for window_id, distance, start, end in found:
                best.setdefault(window_id >> WINDOW_BITS, (window_id >> WINDOW_BITS, distance, start, end))
            if len(best) >= k or len(found) < wanted or wanted == KNN_LIMIT:
                return list(best.values())[:k]
            wanted = min(wanted * OVERSAMPLE, KNN_LIMIT)

    def _hits(self, best: list[tuple[int, float, int, int]]) -> list[Hit]:
        if not best:
            return []
        marks = ",".join("?" * len(best))
        rows = {rowid: rest for rowid, *rest in self.connection.execute(
            f"SELECT rowid, collection, submission, row_number, id, text, row_json FROM rows WHERE rowid IN ({marks})",
            [rowid for rowid, *_ in best])}
        return [Hit(c, s, n, i, d, t, json.loads(j), {"start": start, "end": end})
                for rowid, d, start, end in best for c, s, n, i, t, j in [rows[rowid]]]

    def models(self, collection: str | None = None) -> dict[str, str]:
        """The model of each collection, from any one of its rows (the UNIQUE(collection, id) index finds it)."""
        scope, params = (" WHERE collection = ?", (collection,)) if collection is not None else ("", ())
        return dict(self.connection.execute(
            "SELECT collection, (SELECT model FROM rows r WHERE r.collection = c.collection LIMIT 1)"
            f" FROM (SELECT DISTINCT collection FROM rows{scope}) c", params))

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
        """(id, row_number, text, row_json, vector) of the rows a submission last wrote, in row order: the
        vector of a windowed row is the normalised mean of its windows."""
        for row_id, number, text, row_json_text, _, vectors in self.windows_of_submission(submission):
            yield row_id, number, text, row_json_text, row_vector(vectors)

    def windows_of_submission(
        self, submission: str
    ) -> Iterator[tuple[str, int, str, str, list[tuple[int, int]], np.ndarray]]:
        """(id, row_number, text, row_json, spans, vectors) of the rows a submission last wrote, in row order."""
        found = self.connection.execute(
            "SELECT rowid, id, row_number, text, row_json, windows FROM rows WHERE submission = ? ORDER BY row_number",
            (submission,),
        )
        for rowid, row_id, number, text, row_json_text, count in found:
            ids = _window_ids(rowid, count)
            windows = self.connection.execute(
                f"SELECT embedding, char_start, char_end FROM window_vectors WHERE rowid IN ({','.join('?' * count)})"
                " ORDER BY rowid", [window_id for (window_id,) in ids]).fetchall()
            vectors = np.stack([np.frombuffer(embedding, dtype=np.float32) for embedding, _, _ in windows])
            yield row_id, number, text, row_json_text, [(start, end) for _, start, end in windows], vectors

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
            return self._delete_rows("submission", submission)

    def delete_collection(self, collection: str) -> int:
        """Remove a collection's rows and windows, tombstoning the submissions that wrote them (a batch a
        worker still holds is refused), in one transaction; returns how many rows."""
        with self._immediate():
            self.connection.execute("INSERT OR REPLACE INTO deleted_submissions(submission, deleted_at)"
                                    " SELECT DISTINCT submission, ? FROM rows WHERE collection = ?",
                                    (time.time(), collection))
            return self._delete_rows("collection", collection)

    def _delete_rows(self, column: str, value: str) -> int:
        """Delete the rows (and their windows' vectors) whose `column` (submission or collection, never user
        input) is `value`, inside the caller's transaction; returns how many rows."""
        rows = self.connection.execute(f"SELECT rowid, windows FROM rows WHERE {column} = ?", (value,)).fetchall()
        if self.dimension is not None:
            self.connection.executemany("DELETE FROM window_vectors WHERE rowid = ?",
                                        [window_id for row in rows for window_id in _window_ids(*row)])
        self.connection.execute(f"DELETE FROM rows WHERE {column} = ?", (value,))
        return len(rows)

    def counts(self) -> tuple[int, int]:
        """(rows, windows): equal in a store of short rows; any window whose row is gone counts too."""
        (rows,) = self.connection.execute("SELECT count(*) FROM rows").fetchone()
        windows = 0
        if self.dimension is not None:
            (windows,) = self.connection.execute("SELECT count(*) FROM window_vectors").fetchone()
        return rows, windows

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.connection.close()
