"""submit: stream a CSV into one RQ job per row, and return a submission id.

Rows flow reader -> TextSpec -> (skip if unchanged in the store) -> length-sorted windows ->
Queue.enqueue_many in pipelined chunks. A submission that fails part-way is withdrawn whole:
its jobs are removed from the queue and its record deleted, so nothing half-enqueued remains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from rq import Queue

from csvembed import defaults
from csvembed.delete import delete_submission
from csvembed.enqueue import RowEnqueuer
from csvembed.jobs import SERIALIZER, RowTask
from csvembed.progress import RUNNING, SubmissionRecords, new_submission_id
from csvembed.reader import CsvFile, Source
from csvembed.rowtext import TextSpec, id_column_index
from csvembed.store import Store, content_hash, open_store, row_json

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


@dataclass
class SubmitResult:
    id: str
    collection: str
    queue: str
    total: int
    enqueued: int
    skipped: int

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "collection": self.collection,
            "queue": self.queue,
            "rows": self.total,
            "enqueued": self.enqueued,
            "skipped": self.skipped,
        }


class Producer:
    """Enqueues the rows of one source as one submission."""

    def __init__(self, connection: redis.Redis, db: str, model: str) -> None:
        self.connection = connection
        self.db = db
        self.model = model
        self.records = SubmissionRecords(connection)

    def submit(self, source: Source, options: SubmitOptions) -> SubmitResult:
        # Everything that can be checked is checked before the first job exists.
        csv_file = CsvFile(source, delimiter=options.delimiter, encoding=options.encoding)
        spec = TextSpec(csv_file.columns, options.text_columns, options.template)
        id_index = id_column_index(csv_file.columns, options.id_column)
        # Opening the store up front reports an unusable --db before anything is enqueued.
        store = open_store(self.db)
        queue = Queue(options.queue, connection=self.connection, serializer=SERIALIZER)
        submission_id = new_submission_id()
        collection = options.collection or source.stem
        self.records.create(
            submission_id,
            collection=collection,
            file=source.name,
            queue=options.queue,
            model=self.model,
            columns=csv_file.columns,
            text=spec.description,
        )
        result = SubmitResult(submission_id, collection, options.queue, 0, 0, 0)
        try:
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
                fresh = self._unchanged_removed(store, collection, csv_file.columns, tasks, options.force)
                self._enqueue(queue, submission_id, fresh, len(tasks) - len(fresh), options.max_pending)
                result.total += len(tasks)
                result.enqueued += len(fresh)
                result.skipped += len(tasks) - len(fresh)
        except BaseException:
            # Rejected part-way: take back every job, and any row a worker already stored.
            delete_submission(self.connection, store, submission_id)
            raise
        finally:
            store.close()
        self.records.set_state(submission_id, RUNNING)
        return result

    def _unchanged_removed(
        self, store: Store, collection: str, columns: list[str], tasks: list[RowTask], force: bool
    ) -> list[RowTask]:
        """Drop rows whose id, text, fields and model are exactly what the store already holds."""
        if force:
            return tasks
        stored = store.stored_hashes(collection, [task.row_id for task in tasks])
        if not stored:
            return tasks
        return [
            task
            for task in tasks
            if stored.get(task.row_id) != content_hash(self.model, task.text, row_json(columns, task.values))
        ]

    def _enqueue(
        self, queue: Queue, submission_id: str, tasks: list[RowTask], skipped: int, max_pending: int | None
    ) -> None:
        # Queue order means nothing to the user, so rows of similar length go together: a worker's
        # batch then needs little padding, which is what decides the model's speed.
        tasks.sort(key=lambda task: len(task.text))
        enqueuer = RowEnqueuer(queue)
        remaining, skipped_left = tasks, skipped
        while True:
            room = self._room(queue, max_pending)
            part, remaining = remaining[:room], remaining[room:]
            with self.connection.pipeline() as pipe:
                enqueuer.enqueue(part, pipe)
                # The total grows in the same transaction as the queue, so status never counts
                # a row that is not there.
                self.records.add_rows(submission_id, len(part), skipped_left, pipe)
                pipe.execute()
            skipped_left = 0
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
