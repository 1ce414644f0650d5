"""submit: stream a CSV into one RQ job per row, and return a submission id.

Rows flow reader -> TextSpec -> (skip if unchanged in the store) -> length-sorted windows ->
RowEnqueuer's Lua script in chunks (the job hashes Queue.enqueue_many would write). A submission
that fails part-way is withdrawn whole: its jobs are removed from the queue and its record deleted,
so nothing half-enqueued remains.
While it runs, submit renews a lease; a submit killed outright (kill -9) loses it, and the
submission then reads as interrupted. The next submit into that collection withdraws the rows it
left queued, so re-running a killed submit never queues a row twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

import redis
from rq import Queue

from csvembed import defaults
from csvembed.delete import delete_submission
from csvembed.enqueue import RowEnqueuer, withdraw_queued
from csvembed.errors import CsvembedError, InputError, UnknownSubmission
from csvembed.jobs import SERIALIZER, RowTask
from csvembed.reader import CsvFile, Source
from csvembed.routing import check_name, model_queue
from csvembed.rowtext import TextSpec, id_column_index
from csvembed.store import Store, content_hash, open_store, other_model, reading, row_json, store_label
from csvembed.submissions import INTERRUPTED, RUNNING, SubmissionRecords, new_submission_id, record_key
from csvembed.windows import DEFAULT_OVERLAP, DEFAULT_POLICY, POLICIES


@dataclass
class SubmitOptions:
    """How to read the file and what to embed; mirrors the `submit` flags."""

    text_columns: tuple[str, ...] = ()
    template: str | None = None
    id_column: str | None = None
    delimiter: str | None = None
    encoding: str | None = None
    collection: str | None = None
    queue: str = defaults.QUEUE_NAME
    force: bool = False
    max_pending: int | None = None
    long_text: str = DEFAULT_POLICY
    window_overlap: int = DEFAULT_OVERLAP
    # Webhook: POST the final status JSON here once nothing is pending (csvembed/webhooks.py).
    notify: str | None = None
    # Only to public addresses: set by the server for submissions made over HTTP, never by its clients.
    notify_public_only: bool = False


@dataclass
class SubmitResult:
    id: str
    collection: str
    queue: str
    total: int
    enqueued: int
    skipped: int
    # Rows failed at submit, never enqueued: what they hold could not be stored (see `unstorable`).
    failed: int = 0

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "collection": self.collection,
            "queue": self.queue,
            "rows": self.total,
            "enqueued": self.enqueued,
            "skipped": self.skipped,
            "failed": self.failed,
        }


def unstorable(task: RowTask) -> str | None:
    """Why no store could ever hold this row, as far as submit can tell; None if one may.

    Such a row fails alone at submit, like a row with empty text at the worker, and the file goes on.
    (A NUL character, which PostgreSQL text cannot hold, is refused by the reader for the whole input.)
    """
    # UTF-8 takes at most 4 bytes a character, so most ids fit without being encoded (this runs per row).
    if len(task.row_id) * 4 > defaults.MAX_KEY_BYTES and (size := len(task.row_id.encode())) > defaults.MAX_KEY_BYTES:
        return f"id too long: {size:,} bytes (UTF-8), at most {defaults.MAX_KEY_BYTES:,}"
    return None


def shown_id(row_id: str) -> str:
    """An id as a failure record shows it: cut, when its length is what is wrong, to fit a line."""
    return row_id if len(row_id) <= defaults.SHOWN_ID_CHARS else f"{row_id[:defaults.SHOWN_ID_CHARS]}…"


class SubmissionGone(CsvembedError):
    """The submission was deleted (or withdrawn as interrupted) while its submit was running."""


class _Lease:
    """Renews the submission's lease from a daemon thread, including while --max-pending holds the file."""

    def __init__(self, records: SubmissionRecords, submission_id: str) -> None:
        self.records, self.submission_id = records, submission_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="csvembed-lease", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(defaults.SUBMIT_LEASE_INTERVAL):
            try:
                if not self.records.renew_lease(self.submission_id):
                    return  # deleted or withdrawn: the next enqueue is refused and says so
            except redis.RedisError:  # a hiccup; the next renewal retries well within the TTL
                continue


class Producer:
    """Enqueues the rows of one source as one submission."""

    def __init__(self, connection: redis.Redis, db: str, model: str) -> None:
        self.connection = connection
        self.db = db
        self.model = model
        self.records = SubmissionRecords(connection)

    def submit(
        self,
        source: Source,
        options: SubmitOptions,
        on_created: Callable[[str], None] | None = None,
        on_read: Callable[[int], None] | None = None,
    ) -> SubmitResult:
        """Enqueue every row. `on_created(id)` runs once the submission exists, before any row is queued
        (so the id can be shown before a --max-pending wait); `on_read(rows)` after each chunk is queued."""
        # Everything that can be checked is checked before the first job exists.
        if options.long_text not in POLICIES:
            raise InputError(f"unknown --long-text {options.long_text!r}: use one of {', '.join(POLICIES)}")
        if options.window_overlap < 0:
            raise InputError(f"--window-overlap must be 0 or more, not {options.window_overlap}")
        if options.max_pending is not None and options.max_pending < 1:  # no queue is ever shorter: a wait forever
            raise InputError(f"--max-pending must be 1 or more, not {options.max_pending}")
        if options.collection is not None and not options.collection.strip():  # "" fell back to the default
            raise InputError("--collection must name a collection, not be empty")
        check_name("--collection", options.collection)
        check_name("--queue", options.queue)
        if options.notify is not None:  # "" went unnoticed: no webhook, no word
            from csvembed.webhooks import check_url  # (http.client and urllib: only for --notify)

            check_url(options.notify, options.notify_public_only)
        csv_file = CsvFile(source, delimiter=options.delimiter, encoding=options.encoding)
        spec = TextSpec(csv_file.columns, options.text_columns, options.template)
        id_index = id_column_index(csv_file.columns, options.id_column)
        # Opening the store up front reports an unusable --db before anything is enqueued.
        store = open_store(self.db)
        queue = Queue(model_queue(options.queue, self.model), connection=self.connection, serializer=SERIALIZER)
        submission_id = new_submission_id()
        # Standard input has no name to key a collection by: two piped files must not overwrite each other.
        collection = options.collection or (f"stdin-{submission_id}" if source.is_stdin else source.stem)
        if len(collection.encode()) > defaults.MAX_KEY_BYTES:
            store.close()
            raise InputError(f"collection name too long: {len(collection.encode()):,} bytes (UTF-8), at most"
                             f" {defaults.MAX_KEY_BYTES:,}")
        stored_model = store.models(collection).get(collection)
        if stored_model not in (None, self.model):
            store.close()
            raise other_model(collection, stored_model, self.model)
        self.records.create(
            submission_id,
            collection=collection,
            file=source.name,
            queue=queue.name,
            model=self.model,
            columns=csv_file.columns,
            text=spec.description,
            long_text=options.long_text,
            window_overlap=options.window_overlap,
            store=store_label(self.db),
            notify=options.notify,
            notify_public_only=options.notify_public_only,
        )
        result = SubmitResult(submission_id, collection, queue.name, 0, 0, 0)
        # Ids this submission enqueued: a later row with one of them is never skipped, so the later
        # row of the file wins even when the earlier one differs from the store and the later does not.
        enqueued_ids: set[str] | None = set() if id_index is not None else None
        try:
            if on_created:
                on_created(submission_id)
            with _Lease(self.records, submission_id):
                self._withdraw_interrupted(collection, submission_id)
                for first_row, rows in csv_file.chunks():
                    tasks = [
                        RowTask(
                            submission_id,
                            first_row + offset,
                            values[id_index] if id_index is not None else str(first_row + offset),
                            spec.render(values),
                            values,
                        )
                        for offset, values in enumerate(rows)
                    ]
                    rejected = [(task, reason) for task in tasks if (reason := unstorable(task))]
                    storable = [task for task in tasks if not unstorable(task)] if rejected else tasks
                    fresh = self._unchanged_removed(store, collection, csv_file.columns, storable, options,
                                                    enqueued_ids)
                    skipped = len(storable) - len(fresh)
                    self._enqueue(queue, submission_id, fresh, skipped, rejected, options.max_pending)
                    result.total += len(tasks)
                    result.enqueued += len(fresh)
                    result.skipped += skipped
                    result.failed += len(rejected)
                    if on_read:
                        on_read(result.total)
                if not self.records.end_submitting(submission_id, RUNNING):
                    raise SubmissionGone(f"submission {submission_id} was deleted while it was being submitted")
        except SubmissionGone:
            raise  # deleted or withdrawn by someone else, who took care of its jobs (and, if deleted, its rows)
        except BaseException:
            # Rejected part-way: take back every job, and any row a worker already stored.
            with suppress(UnknownSubmission):  # unless a `delete` got there first
                delete_submission(self.connection, store, submission_id)
            raise
        finally:
            store.close()
        return result

    def _withdraw_interrupted(self, collection: str, submission_id: str) -> None:
        """Take back the queued rows of earlier submits into this collection that died part-way.

        This submit enqueues those rows again (the skip check covers what was stored), so leaving
        them queued would embed them twice. Each is marked interrupted atomically first, which fails
        for a submit that is still alive and stops a revived one from enqueueing more.
        """
        others = [sid for sid in self.records.ids() if sid != submission_id]
        for snapshot in self.records.snapshots(others):
            if snapshot is None or snapshot.collection != collection or snapshot.state != INTERRUPTED:
                continue
            if self.records.mark_interrupted(snapshot.id):
                withdraw_queued(Queue(snapshot.queue, connection=self.connection, serializer=SERIALIZER), snapshot.id)

    def _unchanged_removed(
        self,
        store: Store,
        collection: str,
        columns: list[str],
        tasks: list[RowTask],
        options: SubmitOptions,
        enqueued_ids: set[str] | None,
    ) -> list[RowTask]:
        """Drop rows whose id, text, fields and model are exactly what the store already holds, and which
        were read as this submission would: whole, or (a long row) under the same --long-text reading.

        A row whose id this submission already enqueued (earlier in this chunk or before) is kept:
        it must replace that earlier row, whatever the store holds now.
        """
        stored = {} if options.force else store.stored_hashes(collection, [task.row_id for task in tasks])
        if not stored:  # nothing to compare (a new collection, or --force): every row is fresh
            if enqueued_ids is not None:
                enqueued_ids.update(task.row_id for task in tasks)
            return tasks
        how = reading(options.long_text, options.window_overlap)
        fresh = []
        for task in tasks:
            repeated = enqueued_ids is not None and task.row_id in enqueued_ids
            known = stored.get(task.row_id)
            if repeated or known is None or not self._unchanged(known, task, columns, how):
                fresh.append(task)
                if enqueued_ids is not None:
                    enqueued_ids.add(task.row_id)
        return fresh

    def _unchanged(self, known: str, task: RowTask, columns: list[str], how: str) -> bool:
        """Whether the stored content hash is this row's, read whole or under `how`."""
        values = row_json(columns, task.values)
        return known in (content_hash(self.model, task.text, values), content_hash(self.model, task.text, values, how))

    def _enqueue(
        self, queue: Queue, submission_id: str, tasks: list[RowTask], skipped: int,
        rejected: list[tuple[RowTask, str]], max_pending: int | None,
    ) -> None:
        """Enqueue tasks, counting the skipped rows and failing the rejected ones (permanently) with the first part."""
        # Queue order means nothing to the user, so rows of similar length go together: a worker's
        # batch then needs little padding, which is what decides the model's speed.
        tasks.sort(key=lambda task: len(task.text))
        enqueuer = RowEnqueuer(queue)
        remaining, skipped_left, rejected_left = tasks, skipped, rejected
        while True:
            room = self._room(queue, max_pending)
            part, remaining = remaining[:room], remaining[room:]
            with self.connection.pipeline() as pipe:
                # The total grows in the same transaction as the queue, so status never counts a row
                # that is not there; both are refused once the submission is deleted or withdrawn.
                last_row = max((task.row_number for task in part), default=0)
                self.records.add_rows(submission_id, len(part) + len(rejected_left), skipped_left, last_row, pipe)
                enqueuer.enqueue(part, pipe, record_key(submission_id))
                for task, reason in rejected_left:
                    self.records.mark_failed(pipe, submission_id, task.row_number, shown_id(task.row_id), reason,
                                             permanent=True)
                if not pipe.execute()[0]:
                    raise SubmissionGone(f"submission {submission_id} was deleted or withdrawn while it was being"
                                         " submitted")
            skipped_left, rejected_left = 0, []
            if not remaining:
                return

    @staticmethod
    def _room(queue: Queue, max_pending: int | None) -> int:
        """How many rows may be enqueued now: backpressure holds the file while the queue is full."""
        if max_pending is None:
            return defaults.ENQUEUE_CHUNK
        while (waiting := queue.count) >= max_pending:
            time.sleep(0.1)
        return min(defaults.ENQUEUE_CHUNK, max_pending - waiting)
