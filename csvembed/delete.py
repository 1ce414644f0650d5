"""delete: remove a submission's rows, vectors and Redis records."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rq import Queue

from csvembed.enqueue import purge_jobs
from csvembed.errors import UnknownSubmission
from csvembed.jobs import SERIALIZER
from csvembed.store import Store
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
