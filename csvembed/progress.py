"""Per-submission records in Redis: the submission's metadata and its exact per-row progress.

Progress is kept in two bitmaps per submission, indexed by row number: `done` and `failed`.
Setting a bit is idempotent, so a row that runs twice still counts once, and BITCOUNT reads the
counts in O(1) calls however many rows there are. A row is in at most one of them: marking it
done clears its failed bit, and a failure is only recorded for a row that is not done.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import redis
from redis.client import Pipeline

PREFIX = "csvembed"
SUBMISSIONS_KEY = f"{PREFIX}:submissions"

# States a submission moves through.
SUBMITTING = "submitting"  # rows are still being read and enqueued; the total is not known yet
RUNNING = "running"  # everything is enqueued; rows are pending
DONE = "done"  # no row pending, none failed
FAILED = "failed"  # no row pending, some failed
CANCELLED = "cancelled"  # submit was rejected part-way; its rows were withdrawn

_MARK_FAILED = """
if redis.call('GETBIT', KEYS[1], ARGV[1]) == 0 then
  redis.call('SETBIT', KEYS[2], ARGV[1], 1)
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('LPUSH', KEYS[4], ARGV[2])
  redis.call('LTRIM', KEYS[4], 0, 19)
end
return 0
"""


def new_submission_id() -> str:
    return secrets.token_hex(5)


def job_id(submission_id: str, row_number: int) -> str:
    return f"{submission_id}-{row_number}"


def _key(submission_id: str, part: str = "") -> str:
    return f"{PREFIX}:sub:{submission_id}" + (f":{part}" if part else "")


@dataclass
class Snapshot:
    """One reading of a submission's progress, as `status --json` prints it."""

    id: str
    state: str
    total: int
    done: int
    failed: int
    skipped: int
    pending: int
    collection: str
    file: str
    queue: str
    model: str
    created_at: float
    started_at: float | None
    updated_at: float | None
    columns: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED, CANCELLED)

    def as_json(self) -> dict:
        return asdict(self)


def _snapshot(submission_id: str, record: dict, done: int, failed: int) -> Snapshot | None:
    if not record:
        return None
    fields = {key.decode(): value.decode() for key, value in record.items()}
    total, skipped = int(fields["total"]), int(fields["skipped"])
    pending = max(total - skipped - done - failed, 0)
    state = fields["state"]
    if state == RUNNING and pending == 0:
        state = FAILED if failed else DONE
    return Snapshot(
        id=submission_id,
        state=state,
        total=total,
        done=done,
        failed=failed,
        skipped=skipped,
        pending=pending,
        collection=fields["collection"],
        file=fields["file"],
        queue=fields["queue"],
        model=fields["model"],
        created_at=float(fields["created_at"]),
        started_at=float(fields["started_at"]) if "started_at" in fields else None,
        updated_at=float(fields["updated_at"]) if "updated_at" in fields else None,
        columns=json.loads(fields["columns"]),
        text=fields["text"],
    )


class SubmissionRecords:
    """Reads and writes every submission's Redis record; the worker and the CLI share it."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._mark_failed = connection.register_script(_MARK_FAILED)

    def create(
        self, submission_id: str, *, collection: str, file: str, queue: str, model: str, columns: Sequence[str], text: str
    ) -> None:
        now = time.time()
        with self.connection.pipeline() as pipe:
            pipe.hset(
                _key(submission_id),
                mapping={
                    "id": submission_id,
                    "state": SUBMITTING,
                    "collection": collection,
                    "file": file,
                    "queue": queue,
                    "model": model,
                    "columns": json.dumps(list(columns)),
                    "text": text,
                    "created_at": now,
                    "total": 0,
                    "skipped": 0,
                },
            )
            pipe.zadd(SUBMISSIONS_KEY, {submission_id: now})
            pipe.execute()

    def add_rows(self, submission_id: str, enqueued: int, skipped: int, pipeline: Pipeline | None = None) -> None:
        """Count rows as they are enqueued (or skipped), so status shows a growing total while submitting."""
        target = pipeline if pipeline is not None else self.connection
        target.hincrby(_key(submission_id), "total", enqueued + skipped)
        if skipped:
            target.hincrby(_key(submission_id), "skipped", skipped)

    def set_state(self, submission_id: str, state: str) -> None:
        self.connection.hset(_key(submission_id), "state", state)

    def columns(self, submission_id: str) -> list[str]:
        raw = self.connection.hget(_key(submission_id), "columns")
        return json.loads(raw) if raw else []

    def collection(self, submission_id: str) -> str:
        raw = self.connection.hget(_key(submission_id), "collection")
        return raw.decode() if raw else ""

    def mark_started(self, pipeline: Pipeline, submission_id: str) -> None:
        """The first time a worker starts rows of this submission: where its rate is measured from."""
        pipeline.hsetnx(_key(submission_id), "started_at", time.time())

    def mark_done(self, pipeline: Pipeline, submission_id: str, row_numbers: Iterable[int]) -> None:
        now = time.time()
        done, failed, errors = _key(submission_id, "done"), _key(submission_id, "failed"), _key(submission_id, "errors")
        for row_number in row_numbers:
            pipeline.setbit(done, row_number, 1)
            pipeline.setbit(failed, row_number, 0)
            pipeline.hdel(errors, row_number)
        pipeline.hsetnx(_key(submission_id), "started_at", now)
        pipeline.hset(_key(submission_id), "updated_at", now)

    def mark_failed(
        self, pipeline: Pipeline | None, submission_id: str, row_number: int, row_id: str, reason: str
    ) -> None:
        """Record a row's final failure, with its id and reason, unless it is already done."""
        record = json.dumps({"row_number": row_number, "id": row_id, "reason": reason})
        keys = [_key(submission_id, part) for part in ("done", "failed", "errors", "recent_failures")]
        self._mark_failed(keys=keys, args=[row_number, record], client=pipeline or self.connection)
        (pipeline or self.connection).hset(_key(submission_id), "updated_at", time.time())

    def clear_failure(self, submission_id: str, row_number: int) -> None:
        """Make a failed row pending again (before it is retried)."""
        with self.connection.pipeline() as pipe:
            pipe.setbit(_key(submission_id, "failed"), row_number, 0)
            pipe.hdel(_key(submission_id, "errors"), row_number)
            pipe.execute()

    def failures(self, submission_id: str) -> list[dict]:
        records = [json.loads(raw) for raw in self.connection.hvals(_key(submission_id, "errors"))]
        return sorted(records, key=lambda record: record["row_number"])

    def recent_failures(self, submission_id: str, count: int) -> list[dict]:
        return [json.loads(raw) for raw in self.connection.lrange(_key(submission_id, "recent_failures"), 0, count - 1)]

    def delete(self, submission_id: str) -> None:
        parts = ("", "done", "failed", "errors", "recent_failures")
        with self.connection.pipeline() as pipe:
            pipe.delete(*(_key(submission_id, part) for part in parts))
            pipe.zrem(SUBMISSIONS_KEY, submission_id)
            pipe.execute()

    def exists(self, submission_id: str) -> bool:
        return bool(self.connection.exists(_key(submission_id)))

    def snapshot(self, submission_id: str) -> Snapshot | None:
        return self.snapshots([submission_id])[0]

    def snapshots(self, submission_ids: list[str]) -> list[Snapshot | None]:
        """Read submissions in a single round trip: per submission, its hash and two BITCOUNTs."""
        with self.connection.pipeline(transaction=False) as pipe:
            for submission_id in submission_ids:
                pipe.hgetall(_key(submission_id))
                pipe.bitcount(_key(submission_id, "done"))
                pipe.bitcount(_key(submission_id, "failed"))
            replies = pipe.execute()
        return [_snapshot(submission_id, *replies[i * 3 : i * 3 + 3]) for i, submission_id in enumerate(submission_ids)]

    def recent(self, count: int) -> list[str]:
        return [raw.decode() for raw in self.connection.zrevrange(SUBMISSIONS_KEY, 0, count - 1)]
