"""The per-row RQ job: what it carries, how it is enqueued, and the function RQ knows it by.

Jobs use RQ's JSON serializer, so user data is never pickled. The batching worker runs many of
these jobs through one model call; a plain `rq worker` can still run them one at a time through
`embed_row`, which is how the benchmark's naive baseline works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from rq import Callback, Queue, Retry
from rq.exceptions import DeserializationError
from rq.job import Job
from rq.queue import EnqueueData
from rq.serializers import JSONSerializer

from csvembed import defaults
from csvembed.progress import job_id

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

    FUNC = "csvembed.jobs.embed_row"

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


def embed_row(submission_id: str, row_number: int, row_id: str, text: str, values: list[str]) -> None:
    """Embed and store one row: the job body when a plain RQ worker runs it alone."""
    ingestor = _process_ingestor()
    task = RowTask(submission_id, row_number, row_id, text, values)
    (outcome,) = ingestor.ingest([task])
    if isinstance(outcome, Exception):
        raise outcome
    with ingestor.records.connection.pipeline() as pipe:
        ingestor.records.mark_done(pipe, submission_id, [(row_number, outcome)])
        pipe.execute()


def row_failed(job: Job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback: record the row as failed once no retry is left.

    RQ calls it on every failed attempt, including rows abandoned by a dead worker.
    """
    if job.retries_left:
        return
    from csvembed.progress import SubmissionRecords

    task = RowTask.from_job(job)
    reason = f"{exc_type.__name__}: {exc_value}" if exc_value is not None else "the worker died"
    SubmissionRecords(connection).mark_failed(None, task.submission_id, task.row_number, task.row_id, reason)


@cache
def _process_ingestor():
    """One ingestor per process for plain RQ workers, configured from the environment."""
    from rq import get_current_job

    from csvembed.embedder import SentenceTransformerEmbedder
    from csvembed.ingest import Ingestor
    from csvembed.progress import SubmissionRecords
    from csvembed.settings import Settings
    from csvembed.store import open_store

    settings = Settings.resolve()
    connection = get_current_job().connection
    return Ingestor(SentenceTransformerEmbedder(settings.model), open_store(settings.db), SubmissionRecords(connection))


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


class CsvembedJob(Job):
    """A Job that can only ever run or call back into csvembed's own functions.

    RQ imports whatever function or callback a job names: when it runs the job, and when its
    maintenance fails a job whose worker died (StartedJobRegistry.cleanup calls the job's
    on_failure). The batching worker and its queues use this class, so a job someone else put on
    the queue runs nothing and calls nothing; its webhooks are dropped too.
    """

    @property
    def func(self) -> Callable[..., None]:
        reason = refusal(self)
        if reason is not None:
            raise TypeError(f"job {self.id}: {reason}")
        return embed_row

    @property
    def failure_callback(self) -> Callable[..., None] | None:
        return row_failed if self._failure_callback_name == ROW_FAILED and refusal(self) is None else None

    @property
    def success_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def restore(self, raw_data) -> None:
        super().restore(raw_data)
        self.webhooks = []
