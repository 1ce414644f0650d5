"""The per-row RQ job: what it carries, how it is enqueued, and the function RQ knows it by.

Jobs use RQ's JSON serializer, so user data is never pickled. The function a job names,
`csvembed.tasks.embed_row`, lives in tasks.py with the job class that resolves it: this module
imports nothing of the pipeline, so the ingestor can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rq import Callback, Queue, Retry
from rq.exceptions import DeserializationError
from rq.job import Job
from rq.queue import EnqueueData
from rq.serializers import JSONSerializer

from csvembed import defaults
from csvembed.submissions import SubmissionRecords, job_id

SERIALIZER = JSONSerializer

# Why a job on a csvembed queue is refused (its failure reason in RQ's FailedJobRegistry).
NOT_OURS = "not a csvembed job"
MALFORMED = "malformed csvembed job: its arguments are not (submission, row number, id, text, values)"
ROW_FAILED = "csvembed.jobs.row_failed"


@dataclass
class RowTask:
    """One CSV row on its way to the store."""

    submission_id: str
    row_number: int
    row_id: str
    text: str
    values: list[str]

    FUNC = "csvembed.tasks.embed_row"

    @classmethod
    def from_job(cls, job: Job) -> RowTask:
        return cls(*job.args)

    @staticmethod
    def well_formed(args: object, kwargs: object) -> bool:
        """Whether a job's arguments are a row's: anyone with Redis access can write any job."""
        if type(args) not in (list, tuple) or len(args) != 5 or kwargs:
            return False
        submission_id, row_number, row_id, text, values = args
        if type(row_number) is not int or type(values) is not list:
            return False
        for value in (submission_id, row_id, text, *values):  # a loop, not all(): this runs per row
            if not isinstance(value, str):
                return False
        return True

    @property
    def job_id(self) -> str:
        return job_id(self.submission_id, self.row_number)

    @property
    def args(self) -> tuple:
        return (self.submission_id, self.row_number, self.row_id, self.text, self.values)

    def enqueue_data(self) -> EnqueueData:
        """The job as RQ's enqueue_many takes it (RowEnqueuer writes the same thing faster)."""
        return Queue.prepare_data(
            self.FUNC,
            args=self.args,
            job_id=self.job_id,
            # RQ's default description repeats every argument: the row would be stored twice.
            description=self.job_id,
            timeout=defaults.JOB_TIMEOUT,
            result_ttl=defaults.RESULT_TTL,
            failure_ttl=defaults.FAILURE_TTL,
            retry=Retry(max=defaults.MAX_RETRIES),
            on_failure=Callback(row_failed),
        )


def row_failed(job: Job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback: record the row as failed once no retry is left.

    RQ calls it on every failed attempt, including rows abandoned by a dead worker.
    """
    if job.retries_left:
        return
    task = RowTask.from_job(job)
    reason = f"{exc_type.__name__}: {exc_value}" if exc_value is not None else "the worker died"
    SubmissionRecords(connection).mark_failed(None, task.submission_id, task.row_number, task.row_id, reason)


def refusal(job: Job) -> str | None:
    """Why the worker must not run this job (NOT_OURS or MALFORMED), or None for a csvembed row.

    Reads only the names a job holds: nothing it names is imported.
    """
    try:
        ours = (job.func_name == RowTask.FUNC and job.instance is None
                and job._failure_callback_name in (None, ROW_FAILED)
                and job._success_callback_name is None and job._stopped_callback_name is None)
        args, kwargs = job.args, job.kwargs
    except DeserializationError:  # data that is not even a (function, instance, args, kwargs)
        return NOT_OURS
    if not ours:
        return NOT_OURS
    return None if RowTask.well_formed(args, kwargs) else MALFORMED
