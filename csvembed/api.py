"""csvembed as a library: one object per deployment (Redis, the store, the model) that every face calls.

The CLI and the HTTP server call `Csvembed` and nothing below it, so a submission id is checked, a
store opened and closed, and an error raised (a CsvembedError: one line, with its exit code) in one
place each.

    from csvembed.api import Csvembed
    from csvembed.settings import Settings

    csvembed = Csvembed(Settings.resolve())
    result = csvembed.submit(open_source("tickets.csv"), SubmitOptions(text_columns=("body",)))
    csvembed.status(result.id).as_json()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, BinaryIO

import redis

from csvembed import defaults
from csvembed.errors import InputError, UnknownSubmission
from csvembed.redact import mask_secrets
from csvembed.settings import Settings
from csvembed.submissions import Snapshot, SubmissionRecords

if TYPE_CHECKING:  # these import pandas, numpy or the store, or only watching needs them: only when used
    from csvembed.batch_durations import Durations
    from csvembed.broker import LocalRedis
    from csvembed.delete import Deleted, DeletedCollection
    from csvembed.embedder import Embedder
    from csvembed.figures import Line
    from csvembed.monitor import Monitor, QueueStats, Reading, WorkerInfo
    from csvembed.producer import SubmitOptions, SubmitResult
    from csvembed.reader import Source
    from csvembed.retry import RetryResult
    from csvembed.store import Hit
    from csvembed.webhooks import Deliverer

@dataclass
class ReadyStore:
    """What `init_store` set up: the store (password masked), its dimension, and the GRANTs to run."""

    store: str
    dimension: int | None = None
    grants: list[str] = field(default_factory=list)


@dataclass
class Exported:
    """What an export wrote, and why rows of the submission's file are not in it (never silent)."""

    records: int
    notes: list[str] = field(default_factory=list)


class Csvembed:
    """Submit, watch, search, export and manage submissions of one deployment.

    Redis is connected on first use (the embedded server is started if none is configured); a
    store is opened per call and always closed, so one object can serve a long-lived process.
    """

    def __init__(self, settings: Settings, connection: redis.Redis | None = None) -> None:
        self.settings = settings
        if connection is not None:
            self.connection = connection

    @cached_property
    def connection(self) -> redis.Redis:
        from csvembed.broker import connect

        return connect(self.settings)

    @cached_property
    def records(self) -> SubmissionRecords:
        return SubmissionRecords(self.connection)

    @cached_property
    def monitor(self) -> Monitor:
        from csvembed.monitor import Monitor

        return Monitor(self.connection)

    # --- getting rows in -------------------------------------------------------------------------

    def submit(
        self,
        source: Source,
        options: SubmitOptions | None = None,
        on_created: Callable[[str], None] | None = None,
        on_read: Callable[[int], None] | None = None,
    ) -> SubmitResult:
        """Enqueue one job per row of `source`; see Producer.submit for the callbacks."""
        from csvembed.producer import Producer, SubmitOptions

        producer = Producer(self.connection, self.settings.db, self.settings.model_id)
        return producer.submit(source, options or SubmitOptions(), on_created=on_created, on_read=on_read)

    def work(self, queues: Sequence[str], burst: bool = False, batch_size: int = defaults.BATCH_SIZE,
             device: str = "auto", backend: str = "auto") -> None:
        """Run a batching worker in this process until stopped (or, with burst, until the queues are empty)."""
        from csvembed.worker import run_worker

        run_worker(self.settings, queues, burst=burst, batch_size=batch_size, device=device, backend=backend)

    def deliver_webhooks(self) -> Deliverer:
        """Deliver due webhooks (--notify) from a daemon thread until its stop(): a server runs one beside the
        workers' own, so a notification is sent even while no worker runs."""
        from csvembed.webhooks import Deliverer

        return Deliverer(self.connection).start()

    def retry(self, submission_id: str, include_permanent: bool = False) -> RetryResult:
        """Requeue a submission's failed rows; permanent failures only with include_permanent."""
        from csvembed.retry import retry_failed

        self._check_store(self.snapshot(submission_id))
        return retry_failed(self.connection, submission_id, include_permanent=include_permanent)

    # --- watching ------------------------------------------------------------------------------------

    def snapshot(self, submission_id: str) -> Snapshot:
        """The submission's record as it is now; UnknownSubmission if there is none."""
        snapshot = self.records.snapshot(submission_id)
        if snapshot is None:
            raise UnknownSubmission(submission_id)
        return snapshot

    def require(self, submission_id: str) -> None:
        """UnknownSubmission unless the submission exists (one Redis call, no counts read)."""
        if not self.records.exists(submission_id):
            raise UnknownSubmission(submission_id)

    def recent(self, limit: int = defaults.RECENT_SUBMISSIONS) -> list[str]:
        """The ids of the most recent submissions, newest first."""
        return self.records.recent(limit)

    def reading(self, submission_ids: Sequence[str]) -> Reading:
        """The submissions' records and their queues' figures, read together (deleted ones left out)."""
        return self.monitor.read(list(submission_ids))

    def status(self, submission_id: str) -> Line:
        """One submission's figures: what `status --json` prints and GET /submissions/{id} returns."""
        from csvembed.figures import lines

        found = lines(self.reading([submission_id]), time.time())
        if not found:
            raise UnknownSubmission(submission_id)
        return found[0]

    def statuses(self, submission_ids: Sequence[str] | None = None) -> list[Line]:
        """The figures of these submissions (default: the recent ones), newest first."""
        from csvembed.figures import lines

        ids = self.recent() if submission_ids is None else submission_ids
        return lines(self.reading(ids), time.time())

    def failures(self, submission_id: str) -> list[dict]:
        """Every row of the submission that failed for good: {row_number, id, reason, permanent}."""
        self.require(submission_id)
        return self.records.failures(submission_id)

    def recent_failures(self, submission_id: str, limit: int = defaults.RECENT_FAILURES) -> list[dict]:
        return self.records.recent_failures(submission_id, limit)

    def snapshots(self) -> list[Snapshot]:
        """Every submission whose record is still in Redis, newest first (for /metrics)."""
        return [snapshot for snapshot in self.records.snapshots(self.records.ids()) if snapshot is not None]

    def queue_names(self) -> list[str]:
        """Every queue RQ has seen a job on, and the default one."""
        from rq import Queue

        return sorted({queue.name for queue in Queue.all(connection=self.connection)} | {defaults.QUEUE_NAME})

    def batch_durations(self, queues: Sequence[str]) -> dict[str, Durations]:
        """How long the workers' batches took, per queue (batch_durations.py)."""
        from csvembed import batch_durations

        return batch_durations.read(self.connection, list(queues))

    def queues(self, names: Sequence[str], models: dict[str, tuple[str, ...]] | None = None) -> list[QueueStats]:
        """Each queue's rows waiting, rows in progress and live workers (and the models whose rows it holds)."""
        return self.monitor.queues(list(names), models)

    def workers(self) -> list[WorkerInfo]:
        """The live workers of this Redis, by name."""
        return self.monitor.workers()

    def unserved_queues(self) -> list[QueueStats]:
        """The queues of the recent submissions whose rows wait for a model that no live worker serves."""
        return self.monitor.unserved(defaults.RECENT_SUBMISSIONS)

    def local_redis(self) -> LocalRedis:
        """The embedded redis-server's state; never starts it. InputError when --redis-url names another."""
        from csvembed.broker import local_redis_status

        self._embedded_only("shows")
        return local_redis_status(self.settings)

    def stop_local_redis(self) -> int | None:
        """Stop the embedded redis-server (its data stays on disk); its pid, or None if it was not running."""
        from csvembed.broker import stop_local_redis

        self._embedded_only("stops")
        return stop_local_redis(self.settings)

    def row_encoding_note(self) -> str | None:
        """A note for users of their own Redis that keeps queued rows in the large hash encoding."""
        from csvembed.broker import row_encoding_note

        return row_encoding_note(self.settings)

    def _embedded_only(self, doing: str) -> None:
        if self.settings.redis_url:
            raise InputError(f"--redis-url (or CSVEMBED_REDIS_URL) names your own Redis, "
                             f"{mask_secrets(self.settings.redis_url)}: csvembed {doing} only its embedded one")

    # --- using and managing what is stored -----------------------------------------------------------

    def search(self, query: str, k: int = defaults.SEARCH_K, collection: str | None = None,
               submission: str | None = None, where: dict[str, str] | None = None,
               shown: Sequence[str] = ()) -> list[Hit]:
        """The k stored rows nearest to the query, nearest first (see search.search; `shown`: the original
        columns the caller will show, refused if no stored row has them)."""
        from csvembed.search import search

        if submission is not None and (snapshot := self.records.snapshot(submission)) is not None:
            self._check_store(snapshot)
        return search(self.settings, query, k, collection=collection, submission=submission, where=where,
                      embedder=lambda: self.query_embedder, shown=shown)

    @cached_property
    def query_embedder(self) -> Embedder:
        """The model that embeds search queries, loaded on the first search and kept for the next."""
        from csvembed.search import query_embedder

        return query_embedder(self.settings)

    def export(self, submission_id: str, fmt: str, target: BinaryIO, windows: bool = False) -> Exported:
        """Write the submission's stored rows (or windows) with their vectors to `target`, in row order."""
        from csvembed.export import export
        from csvembed.store import reading_store

        _check_format(fmt)
        snapshot = self.snapshot(submission_id)
        self._check_store(snapshot)
        with reading_store(self.settings.db) as store:
            written = export(store, submission_id, snapshot.columns, fmt, store.dimension, target, windows=windows)
        return Exported(written, self._not_exported(snapshot, written))

    def check_export(self, submission_id: str, fmt: str) -> None:
        """Raise now what export() would raise before writing a byte (for a face that streams the file)."""
        from csvembed.store import reading_store

        _check_format(fmt)
        self._check_store(self.snapshot(submission_id))
        with reading_store(self.settings.db):
            pass

    def delete(self, submission_id: str) -> Deleted:
        """Remove the submission: its stored rows and vectors, queued or failed jobs, and records."""
        from csvembed.delete import delete_submission
        from csvembed.store import open_existing_store

        self._check_store(self.snapshot(submission_id))
        store = open_existing_store(self.settings.db)
        try:
            return delete_submission(self.connection, store, submission_id)
        finally:
            if store is not None:
                store.close()

    def delete_collection(self, collection: str) -> DeletedCollection:
        """Remove a collection from the store: its submissions in Redis, and rows whose records are gone."""
        from csvembed.delete import delete_collection
        from csvembed.store import open_existing_store

        store = open_existing_store(self.settings.db)
        try:
            return delete_collection(self.connection, store, self.settings.db, collection)
        finally:
            if store is not None:
                store.close()

    def init_store(self, dimension: int | None = None, worker_role: str = "csvembed_worker",
                   reader_role: str = "csvembed_reader") -> ReadyStore:
        """Create the store's schema, as its owner; on PostgreSQL also the GRANTs a worker role and a reader
        role need (they may then not create anything). The dimension defaults to the model's own."""
        from csvembed.store import is_postgres_url, open_store, store_label

        if not is_postgres_url(self.settings.db):
            open_store(self.settings.db).close()
            return ReadyStore(store_label(self.settings.db))
        from csvembed.store.postgres import PostgresStore, grants

        if dimension is None:
            from csvembed.embedder import load_embedder

            dimension = load_embedder(self.settings, may_export=False).dimension
        store = PostgresStore(self.settings.db)
        try:
            store.create_schema(dimension)
            return ReadyStore(store.path, dimension, grants(store.schema, worker_role, reader_role))
        finally:
            store.close()

    def _check_store(self, snapshot: Snapshot) -> None:
        """Refuse a --db other than the store the submission's rows went to, naming that one."""
        from csvembed.store import check_same_store

        check_same_store(snapshot.store, self.settings.db, snapshot.id)

    def _not_exported(self, snapshot: Snapshot, exported: int) -> list[str]:
        """Why rows of the submission's file are not in its export, so that a short export is never silent."""
        from csvembed.wording import count

        notes = []
        if snapshot.skipped:
            earlier = [other.id for other in self.records.snapshots(self.records.ids())
                       if other is not None and other.collection == snapshot.collection and other.done
                       and other.created_at < snapshot.created_at][:3]
            where = f" ({', '.join(earlier)})" if earlier else ""
            notes.append(f"{count(snapshot.skipped, 'row')} skipped as unchanged: export the earlier submission"
                         f" that stored {'it' if snapshot.skipped == 1 else 'them'}{where}, or submit with --force")
        if snapshot.done > exported:
            notes.append(f"{snapshot.done - exported} since replaced by a later submission")
        if snapshot.pending:
            notes.append(f"{snapshot.pending} not stored yet (csvembed status {snapshot.id})")
        if snapshot.failed:
            notes.append(f"{snapshot.failed} failed (csvembed failures {snapshot.id})")
        return notes


def _check_format(fmt: str) -> None:
    from csvembed.export import FORMATS

    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
