"""What RQ runs for a csvembed job, and the job class that lets it run nothing else.

The batching worker runs many jobs through one model call; a plain `rq worker` can still run them
one at a time through `embed_row`, which is how the benchmark's naive baseline works.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from rq.job import Job

from csvembed.ingest import Ingestor
from csvembed.jobs import ROW_FAILED, RowTask, refusal, row_failed
from csvembed.settings import Settings
from csvembed.store import open_store
from csvembed.submissions import SubmissionRecords


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


@cache
def _process_ingestor():
    """One ingestor per process for plain RQ workers, configured from the environment."""
    from rq import get_current_job

    from csvembed.embedder import SentenceTransformerEmbedder  # torch: only when a plain RQ worker runs a row

    settings = Settings.resolve()
    connection = get_current_job().connection
    return Ingestor(SentenceTransformerEmbedder(settings.model), open_store(settings.db), SubmissionRecords(connection))


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
