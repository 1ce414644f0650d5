"""retry: put a submission's failed rows back in the queue, keeping the counts exact."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry

from csvembed import defaults
from csvembed.errors import UnknownSubmission
from csvembed.jobs import SERIALIZER
from csvembed.submissions import SubmissionRecords, job_id


@dataclass
class RetryResult:
    requeued: list[int]
    # Rows whose failed job has already expired (after FAILURE_TTL): they need a new submit.
    expired: list[int]
    # Rows left failed because the row itself is at fault (e.g. empty text): they would fail again.
    skipped: list[int]


def retry_failed(connection: redis.Redis, submission_id: str, include_permanent: bool = False) -> RetryResult:
    """Requeue the failed rows of a submission with a fresh retry budget.

    Rows whose failure is permanent are skipped unless `include_permanent`: requeued as they are, they
    can only fail the same way (the README promises they are not retried).
    """
    records = SubmissionRecords(connection)
    snapshot = records.snapshot(submission_id)
    if snapshot is None:
        raise UnknownSubmission(submission_id)
    registry = FailedJobRegistry(snapshot.queue, connection=connection, serializer=SERIALIZER)
    result = RetryResult([], [], [])
    for failure in records.failures(submission_id):
        row_number = failure["row_number"]
        if failure["permanent"] and not include_permanent:
            result.skipped.append(row_number)
            continue
        failed_job_id = job_id(submission_id, row_number)
        if connection.zscore(registry.key, failed_job_id) is None or not connection.exists(Job.key_for(failed_job_id)):
            result.expired.append(row_number)
            continue
        connection.hset(Job.key_for(failed_job_id), "retries_left", defaults.MAX_RETRIES)
        # Pending again before it is back in the queue, so a fast worker's outcome is never erased.
        records.clear_failure(submission_id, row_number)
        try:
            registry.requeue(failed_job_id)
        except (NoSuchJobError, InvalidJobOperation):  # it expired just now
            result.expired.append(row_number)
            continue
        result.requeued.append(row_number)
    return result
