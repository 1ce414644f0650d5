"""delete: remove a submission's rows, vectors and Redis records."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rq import Queue

from csvembed.errors import UnknownSubmission
from csvembed.jobs import SERIALIZER
from csvembed.enqueue import withdraw
from csvembed.progress import SubmissionRecords
from csvembed.store import Store


@dataclass
class Deleted:
    id: str
    rows: int
    jobs: int


def delete_submission(connection: redis.Redis, store: Store | None, submission_id: str) -> Deleted:
    """Remove everything a submission left: stored rows and vectors, queued or failed jobs, progress.

    Rows it stored that a later submission has since replaced belong to that one and stay.
    """
    records = SubmissionRecords(connection)
    snapshot = records.snapshot(submission_id)
    if snapshot is None:
        raise UnknownSubmission(f"no submission with id {submission_id!r}")
    queue = Queue(snapshot.queue, connection=connection, serializer=SERIALIZER)
    jobs = withdraw(queue, submission_id, snapshot.total)
    rows = store.delete_submission(submission_id) if store is not None else 0
    records.delete(submission_id)
    return Deleted(submission_id, rows, jobs)
