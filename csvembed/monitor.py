"""What status, list and workers show, read from Redis in two round trips per refresh (records, then queues).

Per submission: its record and progress bitmaps (see submissions.py). Per queue: rows waiting, rows
in progress (RQ's started registry, so shared by the submissions on that queue) and live workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import redis
from rq import Queue
from rq.worker import Worker
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from csvembed.jobs import SERIALIZER
from csvembed.submissions import Snapshot, SubmissionRecords


@dataclass
class QueueStats:
    name: str
    waiting: int
    in_progress: int
    workers: int


@dataclass
class Reading:
    """One refresh: the submissions asked for and the queues they use."""

    snapshots: list[Snapshot]
    queues: dict[str, QueueStats]


@dataclass
class WorkerInfo:
    """A live worker, as `csvembed workers --json` prints it."""

    name: str
    queues: list[str]
    state: str
    batch_size: int | None
    rows_done: int
    rows_failed: int
    last_heartbeat: str | None

    def as_json(self) -> dict:
        return asdict(self)


class Monitor:
    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self.records = SubmissionRecords(connection)

    def read(self, submission_ids: list[str]) -> Reading:
        snapshots = [s for s in self.records.snapshots(submission_ids) if s is not None]
        names = sorted({snapshot.queue for snapshot in snapshots})
        return Reading(snapshots, {stats.name: stats for stats in self.queues(names)})

    def queues(self, names: list[str]) -> list[QueueStats]:
        """Rows waiting, rows in progress and live workers of each queue, in one round trip."""
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                queue = Queue(name, connection=self.connection, serializer=SERIALIZER)
                pipe.llen(queue.key)
                pipe.zcard(queue.started_job_registry.key)
                pipe.scard(WORKERS_BY_QUEUE_KEY % name)
            counts = pipe.execute()
        return [QueueStats(name, *counts[i * 3 : i * 3 + 3]) for i, name in enumerate(names)]

    def workers(self) -> list[WorkerInfo]:
        found = []
        for worker in Worker.all(connection=self.connection, serializer=SERIALIZER):
            batch_size = self.connection.hget(worker.key, "batch_size")
            found.append(WorkerInfo(
                name=worker.name,
                queues=worker.queue_names(),
                state=str(worker.get_state()),
                batch_size=int(batch_size) if batch_size else None,
                rows_done=worker.successful_job_count,
                rows_failed=worker.failed_job_count,
                last_heartbeat=worker.last_heartbeat.isoformat() if worker.last_heartbeat else None,
            ))
        return sorted(found, key=lambda info: info.name)
