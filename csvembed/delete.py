"""delete: remove a submission's (or a whole collection's) rows, vectors and Redis records."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

import redis
from rq import Queue

from csvembed.enqueue import purge_jobs
from csvembed.errors import InputError, UnknownSubmission
from csvembed.jobs import SERIALIZER
from csvembed.store import Store, store_label
from csvembed.submissions import SubmissionRecords


@dataclass
class Deleted:
    id: str
    rows: int
    jobs: int


def delete_submission(connection: redis.Redis, store: Store | None, submission_id: str) -> Deleted:
    """Remove everything a submission left: stored rows and vectors, queued or failed jobs, progress.

    The record goes first and in one step: from then on a running submit cannot enqueue and a worker
    cannot mark anything for it (those writes act only while the record exists). The store keeps a
    tombstone in the transaction that deletes the rows, so a batch a worker still holds is refused.
    Rows it stored that a later submission has since replaced belong to that one and stay.
    """
    taken = SubmissionRecords(connection).take(submission_id)
    if taken is None:
        raise UnknownSubmission(submission_id)
    queue = Queue(taken.queue, connection=connection, serializer=SERIALIZER)
    jobs = purge_jobs(queue, submission_id, taken.last_row)
    rows = store.delete_submission(submission_id) if store is not None else 0
    return Deleted(submission_id, rows, jobs)


@dataclass
class DeletedCollection:
    collection: str
    rows: int
    submissions: list[str]


def delete_collection(connection: redis.Redis, store: Store | None, db: str, collection: str) -> DeletedCollection:
    """Remove a collection: its submissions in this store (records, jobs, rows), then every row left in it,
    including rows whose submissions are gone from Redis (expired, or a Redis that was reset)."""
    records = SubmissionRecords(connection)
    ours = [snapshot.id for snapshot in records.snapshots(records.ids()) if snapshot is not None
            and snapshot.collection == collection and snapshot.store in ("", store_label(db))]
    known = store is not None and collection in store.collections()
    if not ours and not known:
        raise InputError(f"no collection {collection!r} in {store_label(db)}")
    rows = 0
    for submission_id in ours:
        with suppress(UnknownSubmission):  # deleted meanwhile by someone else
            rows += delete_submission(connection, store, submission_id).rows
    if store is not None:
        rows += store.delete_collection(collection)
    return DeletedCollection(collection, rows, ours)
