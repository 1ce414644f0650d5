"""The PostgreSQL + pgvector store: the same identity and guarantees as the SQLite store, for many hosts.

`csvembed_rows` is keyed by (collection, id) and holds the row, its fields as json (kept as written, in the
CSV's column order, which jsonb would re-sort) and its vector (the
normalised mean of its windows); `csvembed_windows` holds each window's vector and character span,
keyed by (collection, id, window_index) and deleted with its row (ON DELETE CASCADE). A batch is
one transaction: `INSERT ... ON CONFLICT (collection, id) DO UPDATE` of the rows, then the written
rows' windows deleted and inserted again, so a retried row is stored once with exactly its windows.
The vector columns' dimension comes from `csvembed db init` or the first model that writes, and is
recorded, so another model cannot share the tables by accident; a collection holds rows of one model.
A command only checks that the schema is there: DDL runs only when something is missing, so roles
that may only read, or read and write rows, work once an owner ran `csvembed db init`.
Search uses an HNSW index on the windows (cosine distance), keeping each row's best window; a filter
that matches few windows ranks them exactly instead; a GIN index on the row as jsonb makes `--where col=value` an
indexed filter. A store made before windows is migrated when opened: each row's vector becomes its
one window.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import groupby
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from csvembed import defaults
from csvembed.errors import InputError, ServiceUnavailable
from csvembed.redact import MASK, mask_secrets
from csvembed.store.base import COLUMNS_SAMPLE, LATER_WINS, Hit, StoredRow, other_model, row_vector

# Search asks for this many windows per row wanted, more while windows of the same rows crowd them
# out, up to SEARCH_WINDOWS windows.
OVERSAMPLE = 4
SEARCH_WINDOWS = 4096

SCHEMA_LOCK = 0x637365  # an advisory lock id: first writers must not race on CREATE TABLE
# The first half of the two-part advisory lock (namespace, hashtext(submission)): writes of a
# submission's rows hold it shared, its delete exclusive, so that under READ COMMITTED no write can
# commit rows after the delete's tombstone check. The two-part key space is apart from SCHEMA_LOCK's.
SUBMISSION_LOCKS = 0x637366
# The first rows of a collection are written by one transaction at a time, so two models cannot both start it.
COLLECTION_LOCKS = 0x637367

TOMBSTONES = """
CREATE TABLE IF NOT EXISTS csvembed_deleted_submissions(
    submission text PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
)
"""

META = "CREATE TABLE IF NOT EXISTS csvembed_meta(key text PRIMARY KEY, value text NOT NULL)"
ROWS = """
CREATE TABLE IF NOT EXISTS csvembed_rows(
    collection text NOT NULL,
    id text NOT NULL,
    submission text NOT NULL,
    row_number bigint NOT NULL,
    text text NOT NULL,
    row json NOT NULL,
    content_hash text NOT NULL,
    model text NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now(),
    submitted_at double precision NOT NULL DEFAULT 0,
    embedding vector({dimension}) NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE INDEX IF NOT EXISTS csvembed_rows_by_submission ON csvembed_rows(submission, row_number);
CREATE INDEX IF NOT EXISTS csvembed_rows_fields ON csvembed_rows USING gin ((row::jsonb) jsonb_path_ops);
"""

WINDOWS = """
CREATE TABLE IF NOT EXISTS csvembed_windows(
    collection text NOT NULL,
    id text NOT NULL,
    window_index integer NOT NULL,
    submission text NOT NULL,
    char_start integer NOT NULL,
    char_end integer NOT NULL,
    embedding vector({dimension}) NOT NULL,
    PRIMARY KEY (collection, id, window_index),
    FOREIGN KEY (collection, id) REFERENCES csvembed_rows ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS csvembed_windows_embedding ON csvembed_windows USING hnsw (embedding vector_cosine_ops);
CREATE INDEX IF NOT EXISTS csvembed_windows_by_submission ON csvembed_windows(submission);
"""

UPSERT = """
INSERT INTO csvembed_rows(collection, id, submission, row_number, text, row, content_hash, model, embedding,
    submitted_at)
VALUES (%s, %s, %s, %s, %s, %s::json, %s, %s, %s, %s)
ON CONFLICT (collection, id) DO UPDATE SET submission = excluded.submission, row_number = excluded.row_number,
    text = excluded.text, row = excluded.row, content_hash = excluded.content_hash, model = excluded.model,
    embedding = excluded.embedding, stored_at = now(), submitted_at = excluded.submitted_at
""" + "WHERE " + LATER_WINS.format(stored="csvembed_rows") + " RETURNING collection, id"

INSERT_WINDOW = """
INSERT INTO csvembed_windows(collection, id, window_index, submission, char_start, char_end, embedding)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""


TABLES = ("csvembed_meta", "csvembed_rows", "csvembed_windows", "csvembed_deleted_submissions")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def grants(schema: str, worker_role: str, reader_role: str) -> list[str]:
    """What a worker role (store and delete rows) and a reader role (search, export) need: no DDL right, and
    no right to change the recorded dimension or to take back a tombstone (which would let a deleted
    submission's queued rows be stored again)."""
    def tables(*names: str) -> str:
        return ", ".join(f"{_quoted(schema)}.{table}" for table in names)

    roles = f"{_quoted(worker_role)}, {_quoted(reader_role)}"
    return [f"GRANT USAGE ON SCHEMA {_quoted(schema)} TO {roles};",
            f"GRANT SELECT ON {tables(*TABLES)} TO {roles};",
            f"GRANT INSERT, UPDATE, DELETE ON {tables('csvembed_rows', 'csvembed_windows')} TO {_quoted(worker_role)};",
            f"GRANT INSERT ON {tables('csvembed_deleted_submissions')} TO {_quoted(worker_role)};"]


def _passwords(url: str) -> list[str]:
    """The URL's passwords (user:password@, ?password=, ?sslpassword=) as written and as decoded, longest
    first, to take out of libpq's messages: one quotes a bad value alone (`invalid percent-encoded token`)."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
    except ValueError:  # mask_secrets still masks the password wherever the message repeats the URL
        return []
    for key, _, value in (pair.partition("=") for pair in parts.query.split("&")):
        if unquote(key).lower() in ("password", "sslpassword"):
            found += [value, unquote(value)]
    return sorted({password for password in found if password}, key=len, reverse=True)


def _escaped(url: str) -> str:
    """The URL with an unescaped @ in its password percent-encoded. libpq ends the password at the first @
    and takes the rest for the host, then prints that host (part of the password) in its error."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return url
    userinfo, _, host = netloc.rpartition("@")
    if "@" not in userinfo:
        return url
    user, colon, password = userinfo.partition(":")
    return url.replace(netloc, f"{user}{colon}{quote(password, safe='%')}@{host}", 1)


def _by_row(rows: Sequence[StoredRow], vectors: np.ndarray) -> Iterator[tuple[StoredRow, np.ndarray]]:
    """Each row with its windows' vectors (stacked in row order in `vectors`)."""
    first = 0
    for row in rows:
        yield row, np.asarray(vectors[first:first + len(row.windows)], dtype=np.float32)
        first += len(row.windows)
    if first != len(vectors):
        raise ValueError(f"{len(vectors)} vectors for {first} windows")


def _as_array(embedding) -> np.ndarray:
    """pgvector hands back numpy arrays from text results and Vector objects from binary ones."""
    return np.asarray(embedding.to_numpy() if hasattr(embedding, "to_numpy") else embedding, dtype=np.float32)


def _migrate_windows(connection: psycopg.Connection) -> None:
    """A store made before windows gets its windows table: each row's vector becomes its one window."""
    if connection.execute("SELECT to_regclass('csvembed_rows') IS NOT NULL"
                          " AND to_regclass('csvembed_windows') IS NULL").fetchone()[0]:
        (dimension,) = connection.execute("SELECT value FROM csvembed_meta WHERE key = 'dimension'").fetchone()
        connection.execute(WINDOWS.format(dimension=int(dimension)))
        connection.execute("INSERT INTO csvembed_windows SELECT collection, id, 0, submission, 0, char_length(text),"
                           " embedding FROM csvembed_rows")
        connection.execute("DROP INDEX IF EXISTS csvembed_rows_embedding")


class PostgresStore:
    """One connection per process; each batch is one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = mask_secrets(url)
        self._migrated = False
        self.connection = self._connect()

    def _connect(self) -> psycopg.Connection:
        try:
            connection = psycopg.connect(_escaped(self.url), connect_timeout=int(defaults.REDIS_CONNECT_TIMEOUT))
            with connection.transaction():
                missing = connection.execute("SELECT to_regclass('csvembed_meta') IS NULL"
                                             " OR to_regclass('csvembed_deleted_submissions') IS NULL").fetchone()[0]
            if missing:
                self._create(connection, None)
            with connection.transaction():
                _migrate_windows(connection)
        except psycopg.errors.InsufficientPrivilege:
            raise self._init_needed() from None
        except psycopg.Error as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # libpq's messages may repeat the whole URL, or quote the password alone (a bad %-escape).
            for password in _passwords(self.url):
                first_line = first_line.replace(password, MASK)
            shown = mask_secrets(first_line)
            raise ServiceUnavailable(f"cannot use the store {self.path}: {shown}") from None
        register_vector(connection)
        return connection

    def _init_needed(self) -> ServiceUnavailable:
        return ServiceUnavailable(f"the store {self.path} lacks csvembed's tables and this role may not create them:"
                                  f" run `csvembed db init --db {self.path}` first, as the database's owner")

    def _create(self, connection: psycopg.Connection, dimension: int | None) -> None:
        """The extension and the tables (the vector tables only once a dimension is known), in one transaction."""
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            try:
                with connection.transaction():  # a savepoint: the privilege is looked up after it failed
                    connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.errors.InsufficientPrivilege:
                # pgvector is no trusted extension: a database owner who is no superuser may not create it,
                # and `run db init` would send that owner back to the command that failed.
                if not connection.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()[0]:
                    raise
                raise ServiceUnavailable(
                    f"the store {self.path} lacks the vector extension (pgvector) and this role may not create it:"
                    " a superuser must run `CREATE EXTENSION vector` in that database first") from None
            connection.execute(META)
            connection.execute(TOMBSTONES)
            if dimension is not None and connection.execute(
                    "SELECT 1 FROM csvembed_meta WHERE key = 'dimension'").fetchone() is None:
                connection.execute(ROWS.format(dimension=int(dimension)))
                connection.execute(WINDOWS.format(dimension=int(dimension)))
                connection.execute("INSERT INTO csvembed_meta(key, value) VALUES ('dimension', %s)", (str(dimension),))

    @property
    def schema(self) -> str:
        """Where the tables are: the first schema of the role's search_path."""
        found = self._usable().execute("SELECT current_schema()").fetchone()[0]
        self.connection.commit()
        return found

    def create_schema(self, dimension: int) -> None:
        """`csvembed db init`: every table and index, so that commands never need to run DDL."""
        try:
            self._create(self._usable(), dimension)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ServiceUnavailable(f"cannot set up the store {self.path}: {mask_secrets(str(exc).strip())}"
                                     " (run `csvembed db init` as the database's owner)") from None
        if self.dimension != dimension:
            raise InputError(f"the store {self.path} holds {self.dimension}-dimensional vectors, not {dimension}")

    def _usable(self) -> psycopg.Connection:
        """The connection, re-made if the server restarted under it."""
        if self.connection.closed or self.connection.broken:
            self.connection = self._connect()
        return self.connection

    @property
    def dimension(self) -> int | None:
        found = self._usable().execute("SELECT value FROM csvembed_meta WHERE key = 'dimension'").fetchone()
        self.connection.commit()
        return int(found[0]) if found else None

    def _ensure_table(self, dimension: int) -> None:
        existing = self.connection.execute("SELECT value FROM csvembed_meta WHERE key = 'dimension'").fetchone()
        if existing is None:
            self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self.connection.execute(ROWS.format(dimension=int(dimension)))
            self.connection.execute(WINDOWS.format(dimension=int(dimension)))
            self.connection.execute(
                "INSERT INTO csvembed_meta(key, value) VALUES ('dimension', %s) ON CONFLICT DO NOTHING",
                (str(dimension),))
        elif not self._migrated and self.connection.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'csvembed_rows'"
            " AND column_name = 'submitted_at'"
        ).fetchone() is None:
            # A table made before submissions were ordered (ALTER locks the table: only when needed).
            self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self.connection.execute("ALTER TABLE csvembed_rows ADD COLUMN IF NOT EXISTS"
                                    " submitted_at double precision NOT NULL DEFAULT 0")
        self._migrated = True
        if existing is not None and int(existing[0]) != dimension:
            raise InputError(f"the store {self.path} holds {existing[0]}-dimensional vectors, but the model gives"
                             f" {dimension}: use another --db for another model")

    def _model_of(self, collection: str) -> str | None:
        found = self.connection.execute("SELECT model FROM csvembed_rows WHERE collection = %s LIMIT 1",
                                        (collection,)).fetchone()
        return found[0] if found else None

    def _check_models(self, rows: Sequence[StoredRow]) -> None:
        """Refuse rows of a model other than their collection's (InputError)."""
        for collection, model in sorted({(row.collection, row.model) for row in rows}):
            stored = self._model_of(collection)
            if stored is None:
                self.connection.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                                        (COLLECTION_LOCKS, collection))
                stored = self._model_of(collection)  # a first writer may have committed meanwhile
            if stored is not None and stored != model:
                raise other_model(collection, stored, model)

    def write(self, rows: Sequence[StoredRow], vectors: np.ndarray) -> None:
        """Upsert rows and vectors in one transaction, leaving out rows of deleted submissions."""
        connection = self._usable()
        with self._writing(), connection.transaction(), connection.cursor() as cursor:
            try:
                self._ensure_table(vectors.shape[1])
            except psycopg.errors.InsufficientPrivilege:
                raise self._init_needed() from None
            self._check_models(rows)
            # Shared locks in one order (no deadlock between writers), held until commit; then the
            # tombstone check sees every delete that committed, and no delete can commit meanwhile.
            submissions = sorted({row.submission for row in rows})
            connection.execute("SELECT pg_advisory_xact_lock_shared(%s, hashtext(s)) FROM unnest(%s::text[]) AS s"
                               " ORDER BY hashtext(s)", (SUBMISSION_LOCKS, submissions))
            deleted = {submission for (submission,) in connection.execute(
                "SELECT submission FROM csvembed_deleted_submissions WHERE submission = ANY(%s)", (submissions,))}
            # Rows locked in key order (sorted stably: an id twice keeps its order), so two batches that share
            # ids in other orders (re-sorted files) wait for each other instead of deadlocking.
            written = self._upsert(cursor, sorted(
                ((row, vectors) for row, vectors in _by_row(rows, vectors) if row.submission not in deleted),
                key=lambda pair: (pair[0].collection, pair[0].id)))
            keys = [(row.collection, row.id) for row, _ in written]
            connection.execute("DELETE FROM csvembed_windows WHERE (collection, id) IN"
                               " (SELECT * FROM unnest(%s::text[], %s::text[]))",
                               ([collection for collection, _ in keys], [row_id for _, row_id in keys]))
            cursor.executemany(INSERT_WINDOW, [
                (row.collection, row.id, index, row.submission, start, end, vector)
                for row, row_vectors in written
                for index, ((start, end), vector) in enumerate(zip(row.windows, row_vectors))
            ])

    @staticmethod
    def _upsert(cursor: psycopg.Cursor, rows: list[tuple[StoredRow, np.ndarray]]) -> list[tuple[StoredRow, np.ndarray]]:
        """Upsert the rows; those stored now (not superseded by a later row), with their windows' vectors.

        An id twice in one batch is upserted twice in order, so the last one written is the one stored.
        """
        cursor.executemany(UPSERT, [
            (row.collection, row.id, row.submission, row.row_number, row.text, row.row_json,
             row.content_hash, row.model, row_vector(vectors), row.submitted_at)
            for row, vectors in rows
        ], returning=True)
        written = {}
        for row, vectors in rows:
            if cursor.fetchone() is not None:
                written[row.collection, row.id] = (row, vectors)
            cursor.nextset()
        return list(written.values())

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A role that may not write (a reader) gets one line, not a traceback."""
        try:
            yield
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ServiceUnavailable(f"cannot write to the store {self.path}: {str(exc).strip()}") from None

    def rejected(self, error: Exception) -> str | None:
        """SQLSTATE classes 22 (data exception: \\u0000 in jsonb), 23 (integrity constraint violation) and 54
        (program limit exceeded: an index entry over btree's 2704 bytes); and psycopg's own DataError for a
        NUL in text, refused before it is sent, without a SQLSTATE. Connection errors are outages."""
        if not isinstance(error, psycopg.Error):
            return None
        refused = error.sqlstate[:2] in ("22", "23", "54") if error.sqlstate else isinstance(error, psycopg.DataError)
        if not refused:
            return None
        first_line = str(error).strip().split("\n")[0]
        return mask_secrets(first_line) or type(error).__name__

    def _read(self, query: str, params: Sequence) -> list[tuple]:
        connection = self._usable()
        if self.dimension is None:
            return []
        with connection.transaction():
            return connection.execute(query, params).fetchall()

    def stored_hashes(self, collection: str, ids: Sequence[str]) -> dict[str, str]:
        found = self._read("SELECT id, content_hash FROM csvembed_rows WHERE collection = %s AND id = ANY(%s)",
                           (collection, list(ids)))
        return dict(found)

    def search(
        self,
        query: np.ndarray,
        k: int,
        collection: str | None = None,
        submission: str | None = None,
        where: dict[str, str] | None = None,
    ) -> list[Hit]:
        """The k rows whose best window is nearest by cosine distance, nearest first.

        A filter that matches at most EXACT_SEARCH_WINDOWS windows ranks all of them (exact, and fast on
        so few); otherwise the HNSW index gives the `wanted` nearest windows, kept one per row, and more
        are asked for while fewer than k rows remain. If the index still gives fewer than k rows of a
        filter, the exact ranking does: k rows come back whenever k rows match.
        """
        if self.dimension is None:
            return []
        filters, params = "", [np.asarray(query, dtype=np.float32)]
        for column, value in (("collection", collection), ("submission", submission)):
            if value is not None:
                filters += f" AND {column} = %s"
                params.append(value)
        if where:
            filters += " AND (collection, id) IN (SELECT collection, id FROM csvembed_rows WHERE row::jsonb @> %s)"
            params.append(Jsonb(where))
        if filters and self._matching(filters, params[1:]) <= defaults.EXACT_SEARCH_WINDOWS:
            found = self._exact_rows(filters, params, k)
        else:
            wanted = min(k * OVERSAMPLE, SEARCH_WINDOWS)
            while True:
                windows, found = self._nearest_rows(filters, params, wanted, k)
                if len(found) >= k or windows < wanted or wanted == SEARCH_WINDOWS:
                    break
                wanted = min(wanted * OVERSAMPLE, SEARCH_WINDOWS)
            if len(found) < k and filters:
                found = self._exact_rows(filters, params, k)
        return [Hit(c, s, n, i, float(d), t, r, {"start": start, "end": end})
                for _, c, s, n, i, d, t, r, start, end in found]

    def _matching(self, filters: str, params: list) -> int:
        """How many windows pass the filters, counted up to one past EXACT_SEARCH_WINDOWS."""
        (count,) = self._read(f"SELECT count(*) FROM (SELECT 1 FROM csvembed_windows WHERE true{filters} LIMIT %s) m",
                              (*params, defaults.EXACT_SEARCH_WINDOWS + 1))[0]
        return count

    def _exact_rows(self, filters: str, params: list, k: int) -> list[tuple]:
        """The k rows of the best windows among all that pass the filters, ranked exactly (no index: the
        distances are computed in a materialized CTE, which the planner cannot order by an index)."""
        return self._read(
            "WITH scored AS MATERIALIZED (SELECT collection, id, char_start, char_end, embedding <=> %s AS distance"
            " FROM csvembed_windows WHERE true" + filters + "), best AS (SELECT DISTINCT ON (collection, id) *"
            " FROM scored ORDER BY collection, id, distance)"
            " SELECT 0, r.collection, r.submission, r.row_number, r.id, b.distance, r.text, r.row, b.char_start,"
            " b.char_end FROM best b JOIN csvembed_rows r USING (collection, id) ORDER BY b.distance LIMIT %s",
            (*params, k))

    def _nearest_rows(self, filters: str, params: list, wanted: int, k: int) -> tuple[int, list[tuple]]:
        """(windows looked at, rows): the `wanted` nearest windows, then the k rows of the best ones."""
        connection = self._usable()
        with connection.transaction():
            # Filtered HNSW scans keep going until `wanted` windows pass the filter (pgvector 0.8); relaxed
            # order is re-sorted below, so the results are still nearest first.
            connection.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            connection.execute(f"SET LOCAL hnsw.ef_search = {min(max(defaults.HNSW_EF_SEARCH, 2 * k), 1000)}")
            found = connection.execute(
                "WITH nearest AS MATERIALIZED (SELECT collection, id, char_start, char_end,"
                " embedding <=> %s AS distance FROM csvembed_windows WHERE true" + filters +
                " ORDER BY distance LIMIT %s), best AS (SELECT DISTINCT ON (collection, id) * FROM nearest"
                " ORDER BY collection, id, distance)"
                " SELECT (SELECT count(*) FROM nearest), r.collection, r.submission, r.row_number, r.id, b.distance,"
                " r.text, r.row, b.char_start, b.char_end FROM best b JOIN csvembed_rows r USING (collection, id)"
                " ORDER BY b.distance LIMIT %s",
                (*params, wanted, k),
            ).fetchall()
        return (found[0][0] if found else 0), found

    def rows_of_submission(self, submission: str) -> Iterator[tuple[str, int, str, str, np.ndarray]]:
        if self.dimension is None:
            return
        connection = self._usable()
        with connection.transaction(), connection.cursor(name="csvembed_export") as cursor:
            cursor.execute("SELECT id, row_number, text, row, embedding FROM csvembed_rows WHERE submission = %s"
                           " ORDER BY row_number", (submission,))
            for row_id, number, text, row, embedding in cursor:
                yield row_id, number, text, json.dumps(row, ensure_ascii=False), _as_array(embedding)

    def windows_of_submission(
        self, submission: str
    ) -> Iterator[tuple[str, int, str, str, list[tuple[int, int]], np.ndarray]]:
        if self.dimension is None:
            return
        connection = self._usable()
        with connection.transaction(), connection.cursor(name="csvembed_export_windows") as cursor:
            cursor.execute("SELECT r.id, r.row_number, r.text, r.row, w.char_start, w.char_end, w.embedding"
                           " FROM csvembed_rows r JOIN csvembed_windows w USING (collection, id)"
                           " WHERE r.submission = %s ORDER BY r.row_number, r.collection, r.id, w.window_index",
                           (submission,))
            for (row_id, number, text, row), windows in groupby(cursor, key=lambda found: found[:4]):
                windows = list(windows)
                yield (row_id, number, text, json.dumps(row, ensure_ascii=False),
                       [(start, end) for *_, start, end, _ in windows],
                       np.stack([_as_array(embedding) for *_, embedding in windows]))

    def collection_of(self, submission: str) -> str:
        found = self._read("SELECT collection FROM csvembed_rows WHERE submission = %s LIMIT 1", (submission,))
        return found[0][0] if found else ""

    def models(self, collection: str | None = None) -> dict[str, str]:
        """The model of each collection, from any one of its rows (the primary key finds it)."""
        scope, params = (" WHERE collection = %s", (collection,)) if collection is not None else ("", ())
        return dict(self._read("SELECT collection, (SELECT model FROM csvembed_rows r WHERE r.collection = c.collection"
                               f" LIMIT 1) FROM (SELECT DISTINCT collection FROM csvembed_rows{scope}) c", params))

    def collections(self) -> list[str]:
        """The collections that hold stored rows, by name."""
        return [name for (name,) in self._read("SELECT DISTINCT collection FROM csvembed_rows ORDER BY 1", ())]

    def columns(self, collection: str | None = None) -> list[str]:
        """The original columns of a sample of the stored rows (of one collection), sorted: for messages."""
        scope, params = ("WHERE collection = %s", (collection,)) if collection is not None else ("", ())
        found = self._read(
            f"SELECT key FROM (SELECT row FROM csvembed_rows {scope} LIMIT %s) AS sample,"
            " jsonb_object_keys(sample.row::jsonb) AS key", (*params, COLUMNS_SAMPLE))
        return sorted({key for (key,) in found})

    def has_column(self, column: str, collection: str | None = None) -> bool:
        """Whether any stored row (of one collection) has this original column: exact, not sampled."""
        scope, params = (" AND collection = %s", (collection,)) if collection is not None else ("", ())
        return bool(self._read(f"SELECT 1 FROM csvembed_rows WHERE row::jsonb ? %s{scope} LIMIT 1", (column, *params)))

    def delete_submission(self, submission: str) -> int:
        """Remove a submission's rows, and leave a tombstone that refuses its later writes, in one transaction."""
        connection = self._usable()
        with self._writing(), connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (SUBMISSION_LOCKS, submission))
            connection.execute("INSERT INTO csvembed_deleted_submissions(submission) VALUES (%s)"
                               " ON CONFLICT DO NOTHING", (submission,))
            # Looked up after the lock: a first write may have created the table meanwhile.
            if connection.execute("SELECT to_regclass('csvembed_rows')").fetchone()[0] is None:
                return 0
            return connection.execute("DELETE FROM csvembed_rows WHERE submission = %s", (submission,)).rowcount

    def delete_collection(self, collection: str) -> int:
        """Remove a collection's rows (their windows cascade), tombstoning the submissions that wrote them."""
        if self.dimension is None:
            return 0
        connection = self._usable()
        with self._writing(), connection.transaction():
            submissions = [s for (s,) in connection.execute(
                "SELECT DISTINCT submission FROM csvembed_rows WHERE collection = %s", (collection,))]
            connection.execute("SELECT pg_advisory_xact_lock(%s, hashtext(s)) FROM unnest(%s::text[]) AS s"
                               " ORDER BY hashtext(s)", (SUBMISSION_LOCKS, submissions))
            connection.execute("INSERT INTO csvembed_deleted_submissions(submission) SELECT unnest(%s::text[])"
                               " ON CONFLICT DO NOTHING", (submissions,))
            return connection.execute("DELETE FROM csvembed_rows WHERE collection = %s", (collection,)).rowcount

    def counts(self) -> tuple[int, int]:
        found = self._read("SELECT (SELECT count(*) FROM csvembed_rows), (SELECT count(*) FROM csvembed_windows)", ())
        return (found[0][0], found[0][1]) if found else (0, 0)

    def close(self) -> None:
        self.connection.close()
