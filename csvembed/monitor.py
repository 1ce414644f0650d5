"""What status, list and workers show, read from Redis in three round trips per refresh (records, queues,
then the queues' workers).

Per submission: its record and progress bitmaps (see submissions.py). Per queue: rows waiting, rows
in progress (RQ's started registry, so shared by the submissions on that queue), live workers and
those of them waiting for their store. A worker whose heartbeat lapsed (HEARTBEAT_TTL, by Redis'
clock) is lost: killed, or cut off from Redis. RQ keeps its record for a minute more; it is not live.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import redis
from rq import Queue
from rq.utils import utcparse
from rq.worker import Worker
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from csvembed import defaults
from csvembed.jobs import SERIALIZER
from csvembed.submissions import Snapshot, SubmissionRecords
from csvembed.worker_record import RETRIES, ROWS_FAILED, WAITING_FOR, WAITING_SINCE

LOST = "lost"


@dataclass
class QueueStats:
    name: str
    waiting: int
    in_progress: int
    workers: int  # live ones: lost workers are left out
    waiting_for_store: int = 0  # of the live workers
    store_waiting_since: float | None = None  # Unix time the first of them began to wait
    # The models of the submissions read on this queue: one, as each model has its own queue (csvembed.routing).
    models: tuple[str, ...] = ()

    @property
    def unserved(self) -> bool:
        """Rows wait and no live worker listens: they wait for a worker of their model to start."""
        return self.waiting > 0 and self.workers == 0

    def as_json(self) -> dict:
        return {**asdict(self), "models": list(self.models), "unserved": self.unserved}


@dataclass
class Reading:
    """One refresh: the submissions asked for and the queues they use."""

    snapshots: list[Snapshot]
    queues: dict[str, QueueStats]


@dataclass
class WorkerInfo:
    """A worker, as `csvembed workers --json` prints it: state idle, busy or lost (heartbeat lapsed)."""

    name: str
    queues: list[str]
    state: str
    batch_size: int | None
    rows_done: int
    rows_failed: int  # for good
    retries: int  # failed attempts that were tried again
    last_heartbeat: str | None
    waiting_for: str | None  # "store" while its store is unreachable
    waiting_since: float | None

    def as_json(self) -> dict:
        return asdict(self)


class Monitor:
    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self.records = SubmissionRecords(connection)

    def read(self, submission_ids: list[str]) -> Reading:
        snapshots = [s for s in self.records.snapshots(submission_ids) if s is not None]
        names = sorted({snapshot.queue for snapshot in snapshots})
        models = {name: tuple(sorted({s.model for s in snapshots if s.queue == name})) for name in names}
        return Reading(snapshots, {stats.name: stats for stats in self.queues(names, models)})

    def queues(self, names: list[str], models: dict[str, tuple[str, ...]] | None = None) -> list[QueueStats]:
        """Rows waiting, rows in progress, live workers and those waiting for the store, per queue (two round trips)."""
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.time()
            for name in names:
                queue = Queue(name, connection=self.connection, serializer=SERIALIZER)
                pipe.llen(queue.key)
                pipe.zcard(queue.started_job_registry.key)
                pipe.smembers(WORKERS_BY_QUEUE_KEY % name)
            (seconds, micros), *counts = pipe.execute()
        now = seconds + micros / 1e6
        members = [counts[i * 3 + 2] for i in range(len(names))]
        with self.connection.pipeline(transaction=False) as pipe:
            for keys in members:
                for key in keys:
                    pipe.hmget(key, "last_heartbeat", WAITING_FOR, WAITING_SINCE)
            fields = iter(pipe.execute())
        queues = []
        for i, name in enumerate(names):
            live = [(waiting_for, since) for heartbeat, waiting_for, since in (next(fields) for _ in members[i])
                    if not _lapsed(heartbeat, now)]
            waiting = [float(since or now) for waiting_for, since in live if waiting_for == b"store"]
            queues.append(QueueStats(name, counts[i * 3], counts[i * 3 + 1], len(live), len(waiting),
                                     min(waiting, default=None), (models or {}).get(name, ())))
        return queues

    def unserved(self, recent: int) -> list[QueueStats]:
        """The queues of the `recent` latest submissions where rows wait for a model no live worker serves."""
        reading = self.read(self.records.recent(recent))
        return [queue for queue in reading.queues.values() if queue.unserved]

    def workers(self) -> list[WorkerInfo]:
        seconds, micros = self.connection.time()
        now = seconds + micros / 1e6
        found = []
        for worker in Worker.all(connection=self.connection, serializer=SERIALIZER):
            batch_size, failed, retries, waiting_for, since, heartbeat = self.connection.hmget(
                worker.key, "batch_size", ROWS_FAILED, RETRIES, WAITING_FOR, WAITING_SINCE, "last_heartbeat")
            found.append(WorkerInfo(
                name=worker.name,
                queues=worker.queue_names(),
                state=LOST if _lapsed(heartbeat, now) else str(worker.get_state()),
                batch_size=int(batch_size) if batch_size else None,
                rows_done=worker.successful_job_count,
                rows_failed=int(failed or 0),
                retries=int(retries or 0),
                last_heartbeat=worker.last_heartbeat.isoformat() if worker.last_heartbeat else None,
                waiting_for=waiting_for.decode() if waiting_for else None,
                waiting_since=float(since) if since else None,
            ))
        return sorted(found, key=lambda info: info.name)


def _lapsed(heartbeat: bytes | None, now: float) -> bool:
    """Whether a worker's last heartbeat (RQ's UTC timestamp) is older than HEARTBEAT_TTL at `now`."""
    return heartbeat is None or now - utcparse(heartbeat.decode()).timestamp() > defaults.HEARTBEAT_TTL
