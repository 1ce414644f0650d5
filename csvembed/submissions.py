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

from csvembed import defaults
from csvembed.redact import mask_url
from csvembed.windows import DEFAULT_OVERLAP, DEFAULT_POLICY, Shape

PREFIX = "csvembed"
SUBMISSIONS_KEY = f"{PREFIX}:submissions"
# Submissions whose webhook is due, scored by when (csvembed/webhooks.py delivers them).
NOTIFY_DUE_KEY = f"{PREFIX}:notify:due"

# States a submission moves through.
SUBMITTING = "submitting"  # rows are still being read and enqueued; the total is not known yet
RUNNING = "running"  # everything is enqueued; rows are pending
DONE = "done"  # no row pending, none failed
PARTIAL = "partial"  # no row pending; some rows stored, some failed
FAILED = "failed"  # no row pending, some failed and none was stored: nothing worked
# The submit process died (its lease lapsed) before every row was enqueued. Read as such while the
# record still says submitting; written once a later submit into the collection withdrew its queued rows.
INTERRUPTED = "interrupted"

# Every time rows finish (done or failed), a worker's clock and the submission's finished count are
# pushed onto a short list: a rate over these samples spans whole batches, however long they take.
# KEYS[2] and KEYS[3] are the done and failed bitmaps in both scripts that use it.
def _push_sample(samples_key: str, at: str) -> str:
    return f"""
redis.call('LPUSH', {samples_key}, {at} .. ' ' .. (redis.call('BITCOUNT', KEYS[2]) + redis.call('BITCOUNT', KEYS[3])))
redis.call('LTRIM', {samples_key}, 0, {defaults.RATE_SAMPLES - 1})
"""


# A record's pending rows (KEYS[1] the record, KEYS[2] and KEYS[3] its done and failed bitmaps), as a Lua expression.
_PENDING = """(tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
  - tonumber(redis.call('HGET', KEYS[1], 'skipped') or '0')
  - redis.call('BITCOUNT', KEYS[2]) - redis.call('BITCOUNT', KEYS[3]))"""


# Webhooks (issue #13): the script that writes the last outcome of a running submission with a --notify
# URL claims its one notification, atomically, so however many workers (or the failure callback) finish
# rows at once, exactly one of them puts it in the due set. Each claim is a new round (its delivery id);
# `retry` makes the submission unfinished again and releases the claim. KEYS[2] and KEYS[3] are the done
# and failed bitmaps wherever it is used.
def _claim_notification(at: str) -> str:
    return f"""
if redis.call('HEXISTS', KEYS[1], 'notify') == 1 and redis.call('HEXISTS', KEYS[1], 'notify_claimed') == 0
   and redis.call('HGET', KEYS[1], 'state') == 'running' then
  if {_PENDING} <= 0 then
    redis.call('HSET', KEYS[1], 'notify_claimed', {at}, 'notify_attempts', 0)
    redis.call('HINCRBY', KEYS[1], 'notify_round', 1)
    redis.call('HDEL', KEYS[1], 'notified_at', 'notify_error', 'notify_given_up', 'notify_next_at')
    redis.call('ZADD', '{NOTIFY_DUE_KEY}', {at}, redis.call('HGET', KEYS[1], 'id'))
  end
end
"""


# Every write below is a script that acts only while the record exists: a worker or a submit that
# is still running after `delete` must not re-create a partial record (or its bitmaps).
_MARK_STARTED = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1]) end
return 0
"""

# ARGV: the time, the count of rows stored whole (one window, nothing cut off) and their numbers, then per
# other row its number, its windows and 1 if text was cut off (0 otherwise): most rows cost one argument.
# The counts grow only for a row not yet done, so a row that runs twice is counted once.
# The counts are added up here and written once per batch, and the failed bitmap and error records are
# cleared only where some row ever failed: per row that leaves one SETBIT (Redis CPU is per command).
_MARK_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local failed, errors = redis.call('EXISTS', KEYS[3]) == 1, redis.call('EXISTS', KEYS[4]) == 1
local truncated, windowed, windows, whole = 0, 0, 0, 0
local last_whole = 2 + tonumber(ARGV[2])
for i = 3, last_whole do
  if redis.call('SETBIT', KEYS[2], ARGV[i], 1) == 0 then whole = whole + 1 end
  if failed then redis.call('SETBIT', KEYS[3], ARGV[i], 0) end
  if errors then redis.call('HDEL', KEYS[4], ARGV[i]) end
end
for i = last_whole + 1, #ARGV, 3 do
  if redis.call('SETBIT', KEYS[2], ARGV[i], 1) == 0 then
    local count = tonumber(ARGV[i + 1])
    if ARGV[i + 2] == '1' then truncated = truncated + 1 end
    if count > 1 then
      windowed = windowed + 1
      windows = windows + count
    elseif count == 1 and ARGV[i + 2] == '0' then
      whole = whole + 1
    end
  end
  if failed then redis.call('SETBIT', KEYS[3], ARGV[i], 0) end
  if errors then redis.call('HDEL', KEYS[4], ARGV[i]) end
end
if truncated > 0 then redis.call('HINCRBY', KEYS[1], 'rows_truncated', truncated) end
if windowed > 0 then
  redis.call('HINCRBY', KEYS[1], 'rows_windowed', windowed)
  redis.call('HINCRBY', KEYS[1], 'windows', windows)
end
if whole > 0 then redis.call('HINCRBY', KEYS[1], 'rows_whole', whole) end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1])
""" + _push_sample("KEYS[5]", "ARGV[1]") + _claim_notification("ARGV[1]") + """
return tonumber(ARGV[2]) + (#ARGV - last_whole) / 3
"""

_MARK_FAILED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('GETBIT', KEYS[2], ARGV[1]) == 0 then
  redis.call('SETBIT', KEYS[3], ARGV[1], 1)
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
  redis.call('LPUSH', KEYS[5], ARGV[2])
  redis.call('LTRIM', KEYS[5], 0, 19)
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
""" + _push_sample("KEYS[6]", "ARGV[3]") + _claim_notification("ARGV[3]") + """
return 1
"""

# A row pending again makes the submission unfinished: its notification claim is released (one not yet
# delivered is dropped), so finishing again notifies again.
_CLEAR_FAILURE = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SETBIT', KEYS[2], ARGV[1], 0)
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], 'notify_claimed', 'notify_next_at')
redis.call('ZREM', '{NOTIFY_DUE_KEY}', ARGV[2])
return 1
"""

# Counts rows while submitting, and records the highest row number enqueued, which `delete` uses to
# find every job (length-sorted windows enqueue row numbers beyond the running total). Returns 0 when
# the submission was deleted or withdrawn meanwhile: the submit must then stop.
_ADD_ROWS = """
if redis.call('HGET', KEYS[1], 'state') ~= 'submitting' then return 0 end
redis.call('HINCRBY', KEYS[1], 'total', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'skipped', ARGV[2])
if tonumber(ARGV[3]) > tonumber(redis.call('HGET', KEYS[1], 'last_row') or '0') then
  redis.call('HSET', KEYS[1], 'last_row', ARGV[3])
end
return 1
"""

_RENEW_LEASE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'submitting' then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
"""

# From submitting to another state, once; the lease goes with it. Workers may have finished every row
# already (or every row was skipped as unchanged): then it is running and finished at once.
# KEYS: the record, the done and failed bitmaps, the lease.
_END_SUBMITTING = """
if redis.call('HGET', KEYS[1], 'state') ~= 'submitting' then return 0 end
if ARGV[2] == 'unleased' and redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
redis.call('DEL', KEYS[4])
-- Finished as it was submitted (every row skipped or failed at once): no worker will mark its end.
if """ + _PENDING + """ <= 0 then redis.call('HSETNX', KEYS[1], 'updated_at', ARGV[3]) end
""" + _claim_notification("ARGV[3]") + """
return 1
"""

# Removes a record and hands back its fields in one step, so that nothing can add to it afterwards.
_TAKE = """
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', unpack(KEYS))
redis.call('ZREM', ARGV[1], ARGV[2])
redis.call('ZREM', ARGV[3], ARGV[2])
return fields
"""


def new_submission_id() -> str:
    return secrets.token_hex(5)


def job_id(submission_id: str, row_number: int) -> str:
    return f"{submission_id}-{row_number}"


def _key(submission_id: str, part: str = "") -> str:
    return f"{PREFIX}:sub:{submission_id}" + (f":{part}" if part else "")


def record_key(submission_id: str) -> str:
    """The hash that holds a submission's metadata; scripts elsewhere gate their writes on it."""
    return _key(submission_id)


# Every key of a submission's record; the record itself ("") first.
_PARTS = ("", "done", "failed", "errors", "recent_failures", "lease", "samples")


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
    # (worker's time, rows finished) each time rows finished, oldest first; the rate comes from these.
    samples: list[tuple[float, int]] = field(default_factory=list, repr=False)
    long_text: str = DEFAULT_POLICY
    window_overlap: int = DEFAULT_OVERLAP
    # Done rows by how their text was read: whole (one window), in windows (and those windows), or
    # cut off (the truncate policy, or past MAX_WINDOWS; such a windowed row counts in both).
    rows_whole: int = 0
    rows_windowed: int = 0
    windows: int = 0
    rows_truncated: int = 0
    # Where its rows go (store_label: a password is never kept); "" in records made before it was kept.
    store: str = ""
    # The webhook (--notify), its URL masked: None without one. notify_state: waiting (not finished),
    # due (claimed, being delivered), delivered or given_up; the others are of the latest round.
    notify: str | None = None
    notify_state: str | None = None
    notified_at: float | None = None
    notify_error: str | None = None
    notify_attempts: int = 0
    notify_next_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in (DONE, PARTIAL, FAILED, INTERRUPTED)

    def as_json(self) -> dict:
        fields = asdict(self)
        del fields["samples"]
        return fields


def _samples(raw: list[bytes]) -> list[tuple[float, int]]:
    pairs = [entry.decode().split(" ") for entry in raw]
    return sorted((float(at), int(finished)) for at, finished in pairs)


def _snapshot(
    submission_id: str, record: dict, done: int, failed: int, leased: int, samples: list[bytes]
) -> Snapshot | None:
    fields = {key.decode(): value.decode() for key, value in record.items()}
    if "created_at" not in fields:  # no record, or a fragment that an older version re-created
        return None
    total, skipped = int(fields.get("total", 0)), int(fields.get("skipped", 0))
    pending = max(total - skipped - done - failed, 0)
    state = fields.get("state", SUBMITTING)
    if state == SUBMITTING and not leased:
        state = INTERRUPTED
    elif state == RUNNING and pending == 0:
        state = (PARTIAL if done else FAILED) if failed else DONE
    return Snapshot(
        id=submission_id,
        state=state,
        total=total,
        done=done,
        failed=failed,
        skipped=skipped,
        pending=pending,
        collection=fields.get("collection", ""),
        file=fields.get("file", ""),
        queue=fields.get("queue", ""),
        model=fields.get("model", ""),
        created_at=float(fields["created_at"]),
        started_at=float(fields["started_at"]) if "started_at" in fields else None,
        updated_at=float(fields["updated_at"]) if "updated_at" in fields else None,
        columns=json.loads(fields.get("columns", "[]")),
        text=fields.get("text", ""),
        samples=_samples(samples),
        long_text=fields.get("long_text", DEFAULT_POLICY),
        window_overlap=int(fields.get("window_overlap", DEFAULT_OVERLAP)),
        rows_whole=int(fields.get("rows_whole", 0)),
        rows_windowed=int(fields.get("rows_windowed", 0)),
        windows=int(fields.get("windows", 0)),
        rows_truncated=int(fields.get("rows_truncated", 0)),
        store=fields.get("store", ""),
        **_notification(fields),
    )


def _notification(fields: dict[str, str]) -> dict:
    """The webhook's fields of a Snapshot, from the record's notify_* fields (see webhooks.py)."""
    if "notify" not in fields:
        return {}
    if "notify_claimed" not in fields:
        state = "waiting"
    elif "notify_given_up" in fields:
        state = "given_up"
    else:
        state = "delivered" if "notified_at" in fields else "due"
    optional = {name: float(fields[name]) if name in fields else None for name in ("notified_at", "notify_next_at")}
    return {"notify": mask_url(fields["notify"]), "notify_state": state, "notify_error": fields.get("notify_error"),
            "notify_attempts": int(fields.get("notify_attempts", 0)), **optional}


@dataclass(frozen=True)
class Origin:
    """What a worker needs of a submission to store its rows; none of it changes after submit."""

    collection: str
    columns: list[str]
    created_at: float
    long_text: str = DEFAULT_POLICY
    window_overlap: int = DEFAULT_OVERLAP


@dataclass
class Taken:
    """What `delete` needs of a record it removed: where its jobs are and how far they go."""

    queue: str
    last_row: int


class SubmissionRecords:
    """Reads and writes every submission's Redis record; the worker and the CLI share it."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._mark_started = connection.register_script(_MARK_STARTED)
        self._mark_done = connection.register_script(_MARK_DONE)
        self._mark_failed = connection.register_script(_MARK_FAILED)
        self._clear_failure = connection.register_script(_CLEAR_FAILURE)
        self._add_rows = connection.register_script(_ADD_ROWS)
        self._renew_lease = connection.register_script(_RENEW_LEASE)
        self._end_submitting = connection.register_script(_END_SUBMITTING)
        self._take = connection.register_script(_TAKE)

    def create(
        self,
        submission_id: str,
        *,
        collection: str,
        file: str,
        queue: str,
        model: str,
        columns: Sequence[str],
        text: str,
        long_text: str = DEFAULT_POLICY,
        window_overlap: int = DEFAULT_OVERLAP,
        store: str = "",
        notify: str | None = None,
        notify_public_only: bool = False,
    ) -> None:
        """A new record in state submitting, with a lease that the submit process must keep renewing.

        notify_public_only (made over HTTP) limits the webhook to public addresses, for every deliverer.

        created_at comes from Redis' clock, the one clock every host shares: it orders submissions, and
        the store keeps a row from the later submission whatever order workers store them in.
        """
        seconds, microseconds = self.connection.time()
        now = seconds + microseconds / 1e6
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
                    "long_text": long_text,
                    "window_overlap": window_overlap,
                    "store": store,
                    "created_at": now,
                    "total": 0,
                    "skipped": 0,
                    "last_row": 0,
                    **({"notify": notify} if notify else {}),
                    **({"notify_public_only": 1} if notify and notify_public_only else {}),
                },
            )
            pipe.set(_key(submission_id, "lease"), 1, ex=defaults.SUBMIT_LEASE_TTL)
            pipe.zadd(SUBMISSIONS_KEY, {submission_id: now})
            pipe.execute()

    def add_rows(
        self, submission_id: str, enqueued: int, skipped: int, last_row: int, pipeline: Pipeline | None = None
    ) -> None:
        """Count rows as they are enqueued (or skipped), so status shows a growing total while submitting.

        In a pipeline, its reply is 0 if the submission is no longer submitting (deleted or withdrawn).
        """
        self._add_rows(keys=[_key(submission_id)], args=[enqueued + skipped, skipped, last_row],
                       client=pipeline or self.connection)

    def renew_lease(self, submission_id: str) -> bool:
        """Keep a running submit visibly alive; False once it was deleted or withdrawn."""
        keys = [_key(submission_id), _key(submission_id, "lease")]
        return bool(self._renew_lease(keys=keys, args=[1, defaults.SUBMIT_LEASE_TTL]))

    def end_submitting(self, submission_id: str, state: str) -> bool:
        """Leave state submitting for `state`; False if it already had (deleted, withdrawn)."""
        keys = [_key(submission_id, part) for part in ("", "done", "failed", "lease")]
        return bool(self._end_submitting(keys=keys, args=[state, "any", time.time()]))

    def mark_interrupted(self, submission_id: str) -> bool:
        """Record as interrupted a submission whose submit died (no lease); False if it is alive or over."""
        keys = [_key(submission_id, part) for part in ("", "done", "failed", "lease")]
        return bool(self._end_submitting(keys=keys, args=[INTERRUPTED, "unleased", time.time()]))

    def origin(self, submission_id: str) -> Origin | None:
        """How to store a submission's rows, or None if it no longer exists (records of older versions
        have no long-text fields: they get the defaults)."""
        fields = ("collection", "columns", "created_at", "long_text", "window_overlap")
        collection, columns, created_at, long_text, overlap = self.connection.hmget(_key(submission_id), *fields)
        if collection is None or created_at is None:
            return None
        return Origin(collection.decode(), json.loads(columns) if columns else [], float(created_at),
                      long_text.decode() if long_text else DEFAULT_POLICY,
                      int(overlap) if overlap else DEFAULT_OVERLAP)

    def mark_started(self, pipeline: Pipeline, submission_id: str) -> None:
        """The first time a worker starts rows of this submission: where its rate is measured from."""
        self._mark_started(keys=[_key(submission_id)], args=[time.time()], client=pipeline)

    def mark_done(self, pipeline: Pipeline, submission_id: str, rows: Iterable[tuple[int, Shape]]) -> None:
        """Mark rows (number, how it was embedded) done, and count each one's shape once."""
        keys = [_key(submission_id, part) for part in ("", "done", "failed", "errors", "samples")]
        whole, others = [], []
        for number, shape in rows:
            if shape.windows == 1 and not shape.truncated:
                whole.append(number)
            else:
                others += (number, shape.windows, int(shape.truncated))
        self._mark_done(keys=keys, args=[time.time(), len(whole), *whole, *others], client=pipeline)

    def mark_failed(
        self, pipeline: Pipeline | None, submission_id: str, row_number: int, row_id: str, reason: str,
        permanent: bool = False,
    ) -> bool:
        """Record a row's final failure, with its id and reason, unless it is already done.

        `permanent`: the row itself is at fault (e.g. empty text), so `retry` leaves it unless told
        otherwise. Without a pipeline, returns False if the submission no longer exists: its job
        must then be deleted, not kept as failed.
        """
        record = json.dumps({"row_number": row_number, "id": row_id, "reason": reason, "permanent": permanent})
        keys = [_key(submission_id, part) for part in ("", "done", "failed", "errors", "recent_failures", "samples")]
        return bool(self._mark_failed(keys=keys, args=[row_number, record, time.time()],
                                      client=pipeline or self.connection))

    def clear_failure(self, submission_id: str, row_number: int) -> bool:
        """Make a failed row pending again (before it is retried); False if the submission is gone."""
        keys = [_key(submission_id, part) for part in ("", "failed", "errors")]
        return bool(self._clear_failure(keys=keys, args=[row_number, submission_id]))

    def failures(self, submission_id: str) -> list[dict]:
        """{row_number, id, reason, permanent} of each failed row, in row order."""
        # Records written before `permanent` existed count as transient: retry still takes them.
        raw_records = self.connection.hvals(_key(submission_id, "errors"))
        records = [{"permanent": False} | json.loads(raw) for raw in raw_records]
        return sorted(records, key=lambda record: record["row_number"])

    def recent_failures(self, submission_id: str, count: int) -> list[dict]:
        return [json.loads(raw) for raw in self.connection.lrange(_key(submission_id, "recent_failures"), 0, count - 1)]

    def take(self, submission_id: str) -> Taken | None:
        """Delete a submission's records in one step; what its jobs need, or None if there was none."""
        keys = [_key(submission_id, part) for part in _PARTS]
        flat = self._take(keys=keys, args=[SUBMISSIONS_KEY, submission_id, NOTIFY_DUE_KEY])
        fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        if "created_at" not in fields:
            return None
        return Taken(fields["queue"], max(int(fields.get("last_row", 0)), int(fields.get("total", 0))))

    def exists(self, submission_id: str) -> bool:
        return bool(self.connection.hexists(_key(submission_id), "created_at"))

    def snapshot(self, submission_id: str) -> Snapshot | None:
        return self.snapshots([submission_id])[0]

    def snapshots(self, submission_ids: list[str]) -> list[Snapshot | None]:
        """Read submissions in a single round trip: per submission, its hash, two BITCOUNTs, its lease and
        its rate samples."""
        with self.connection.pipeline(transaction=False) as pipe:
            for submission_id in submission_ids:
                pipe.hgetall(_key(submission_id))
                pipe.bitcount(_key(submission_id, "done"))
                pipe.bitcount(_key(submission_id, "failed"))
                pipe.exists(_key(submission_id, "lease"))
                pipe.lrange(_key(submission_id, "samples"), 0, -1)
            replies = pipe.execute()
        return [_snapshot(submission_id, *replies[i * 5 : i * 5 + 5]) for i, submission_id in enumerate(submission_ids)]

    def ids(self) -> list[str]:
        """Every submission id, newest first."""
        return [raw.decode() for raw in self.connection.zrevrange(SUBMISSIONS_KEY, 0, -1)]

    def recent(self, count: int) -> list[str]:
        return [raw.decode() for raw in self.connection.zrevrange(SUBMISSIONS_KEY, 0, count - 1)]
