"""Take, start and finish a whole batch of row-jobs with one Lua call each.

RQ's own path issues ~20 commands per job, each built and parsed in Python; at a few hundred µs of
worker CPU per row that caps one worker near 4k rows/s however fast the model is. These scripts
write exactly the keys and fields RQ 3.0's SimpleWorker writes when it starts a job and when it
finishes a result_ttl=0 job (tests/test_batch_scripts.py compares them field by field against
RQ's own perform_job), so `rq info`, RQ's abandoned-job cleanup and rq-dashboard see ordinary jobs.
Key names come from RQ's own helpers, so that a change in RQ's key format is picked up or fails
those tests (rq is pinned to 3.0.0).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from datetime import datetime

import redis
from redis.client import Pipeline
from rq import Queue
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import utcformat

from csvembed.jobs import ROW_FAILED, RowTask

JOB_PREFIX = Job.key_for("")
EXECUTION_PREFIX = Execution(id="E", job_id="J", connection=None).key.removesuffix("J:E")  # type: ignore[arg-type]
EXECUTIONS_PREFIX = ExecutionRegistry.key_template.format("")
RESULTS_PREFIX = Result.get_key("")
# Suffixes of a job's own keys (Job.dependents_key, Job.dependencies_key).
DEPENDENTS_SUFFIX = Job.dependents_key_for("x").removeprefix(Job.key_for("x"))
DEPENDENCIES_SUFFIX = ":dependencies"

# One command per batch, not per job, where a command takes many members (Redis CPU goes per command
# call): `in_chunks(command, key, items)` runs it over at most 1000 items at a time (Lua's unpack has a
# stack limit); key nil: the items are the keys themselves.
_IN_CHUNKS = """
local function in_chunks(command, key, items)
  for first = 1, #items, 1000 do
    local last = math.min(first + 999, #items)
    if key then
      redis.call(command, key, unpack(items, first, last))
    else
      redis.call(command, unpack(items, first, last))
    end
  end
end
"""

# Moves up to ARGV[1] ids from the queue to the intermediate queue (as RQ's dequeue does, one LMOVE each;
# here one LRANGE, LTRIM and RPUSH for them all, which ends the same) and returns,
# per id, what the worker needs of its hash: id, data, origin and the three callback names. Ids
# without a job hash (deleted while queued) are taken off the intermediate queue and not returned; a
# key that is not a hash is returned alone, for the worker to judge.
_TAKE = """
local ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then return {} end
redis.call('LTRIM', KEYS[1], #ids, -1)
""" + _IN_CHUNKS + """
in_chunks('RPUSH', KEYS[2], ids)
local out = {}
for _, id in ipairs(ids) do
  local f = redis.pcall('HMGET', ARGV[2] .. id, 'data', 'origin', 'success_callback_name', 'failure_callback_name',
                        'stopped_callback_name')
  if f['err'] then
    out[#out + 1] = {id}
  elseif f[1] or f[2] then
    out[#out + 1] = {id, f[1], f[2], f[3], f[4], f[5]}
  else
    redis.call('LREM', KEYS[2], 1, id)
  end
end
return out
"""

# Per job, what Execution.create, Job.heartbeat, Job.prepare_for_execution and the PERSIST and LREM
# of Worker.prepare_job_execution write. A job whose hash was deleted meanwhile (its submission
# withdrawn) is only taken off the intermediate queue: writing its fields would re-create a
# fragment of it. Returns the ids of those.
_START = """
local name, stamp, utc, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local started_score, execution_score = ARGV[5], ARGV[6]
local job_prefix, execution_prefix, executions_prefix, status = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local gone, scored, composites = {}, {}, {}
for i = 11, #ARGV, 2 do
  local id, eid = ARGV[i], ARGV[i + 1]
  local job_key = job_prefix .. id
  if redis.call('EXISTS', job_key) == 1 then
    local composite = id .. ':' .. eid
    local execution_key = execution_prefix .. composite
    redis.call('HSET', execution_key, 'id', eid, 'job_id', id, 'created_at', stamp, 'last_heartbeat', stamp,
               'worker_name', name)
    redis.call('EXPIRE', execution_key, ttl)
    redis.call('ZADD', executions_prefix .. id, execution_score, eid)
    redis.call('EXPIRE', executions_prefix .. id, ttl + 60)
    scored[#scored + 1] = started_score
    scored[#scored + 1] = composite
    composites[#composites + 1] = composite
    redis.call('HSET', job_key, 'last_heartbeat', utc, 'status', status, 'started_at', utc,
               'worker_name', name)
    redis.call('PERSIST', job_key)
  else
    gone[#gone + 1] = id
  end
  redis.call('LREM', KEYS[1], 1, id)
end
""" + _IN_CHUNKS + """
in_chunks('ZADD', KEYS[2], scored)
in_chunks('SADD', KEYS[3], composites)
if #ARGV > 10 then redis.call('EXPIRE', KEYS[3], ttl + 60) end
return gone
"""

# Per job, what Execution.delete and Job.delete (via Job.cleanup(0)) remove on RQ's success path for
# a result_ttl=0 job: the execution, its entries in the started registry and the worker's execution
# index, then the job's hash and every key of its own (its execution registry with it, so RQ's ZREM
# from that registry is left out: the end state is the same).
_FINISH = """
local job_prefix, execution_prefix, executions_prefix, results_prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local dependents, dependencies = ARGV[5], ARGV[6]
local composites, keys = {}, {}
for i = 7, #ARGV, 2 do
  local id, eid = ARGV[i], ARGV[i + 1]
  local composite = id .. ':' .. eid
  local job_key = job_prefix .. id
  composites[#composites + 1] = composite
  for _, key in ipairs({execution_prefix .. composite, job_key, job_key .. dependents, job_key .. dependencies,
                        results_prefix .. id, executions_prefix .. id}) do
    keys[#keys + 1] = key
  end
end
""" + _IN_CHUNKS + """
in_chunks('ZREM', KEYS[1], composites)
in_chunks('SREM', KEYS[2], composites)
in_chunks('DEL', nil, keys)
return 0
"""

# Per job, in reverse order (so the batch goes back to the front of the queue in its own order): its
# execution removed as _FINISH does, then the job queued again, its retries untouched. For a worker
# that stops while its store is unreachable: the rows were never tried, so no attempt is spent. A job
# deleted meanwhile (its submission withdrawn) is not queued again.
_RELEASE = """
local job_prefix, execution_prefix, executions_prefix, queued = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
for i = #ARGV - 1, 5, -2 do
  local id, eid = ARGV[i], ARGV[i + 1]
  local composite = id .. ':' .. eid
  redis.call('ZREM', KEYS[2], composite)
  redis.call('SREM', KEYS[3], composite)
  redis.call('DEL', execution_prefix .. composite)
  redis.call('ZREM', executions_prefix .. id, eid)
  if redis.call('EXISTS', job_prefix .. id) == 1 then
    redis.call('HSET', job_prefix .. id, 'status', queued)
    redis.call('HDEL', job_prefix .. id, 'started_at', 'worker_name')
    redis.call('LPUSH', KEYS[1], id)
  end
end
return 0
"""


@dataclass
class Taken:
    """A job id as the take script returned it: its row, or None when it must go the slow way."""

    job_id: str
    task: RowTask | None


class BatchScripts:
    """The scripts, registered once per connection."""

    def __init__(self, connection: redis.Redis) -> None:
        self._take = connection.register_script(_TAKE)
        self._start = connection.register_script(_START)
        self._finish = connection.register_script(_FINISH)
        self._release = connection.register_script(_RELEASE)

    def take(self, queue: Queue, limit: int) -> list[Taken]:
        """Up to `limit` queued jobs, moved to the intermediate queue; no Job object is built.

        A job whose fields are not exactly a csvembed row's comes back without a task, for the
        worker to fetch as a Job and refuse (or, if RQ reads it as a row after all, run).
        """
        if limit <= 0:
            return []
        replies = self._take(keys=[queue.key, queue.intermediate_queue_key], args=[limit, JOB_PREFIX])
        return [Taken(reply[0].decode(), _row(reply, queue.name)) for reply in replies]

    def start(self, pipe: Pipeline, queue: Queue, worker_name: str, ttl: int, ids: list[str],
              execution_ids: list[str], at: datetime) -> None:
        """Start the jobs in `pipe`; its reply is the ids whose job was deleted meanwhile (not started)."""
        stamp = int(at.timestamp())
        args: list = [worker_name, at.timestamp(), utcformat(at), ttl, stamp + ttl, stamp + ttl + 60,
                      JOB_PREFIX, EXECUTION_PREFIX, EXECUTIONS_PREFIX, JobStatus.STARTED.value]
        for pair in zip(ids, execution_ids):
            args.extend(pair)
        keys = [queue.intermediate_queue_key, queue.started_job_registry.key,
                WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker_name)]
        self._start(keys=keys, args=args, client=pipe)

    def finish(self, pipe: Pipeline, queue: Queue, worker_name: str, ids: list[str], execution_ids: list[str]) -> None:
        """Delete finished jobs and their executions in `pipe`, as RQ does for result_ttl=0."""
        args: list = [JOB_PREFIX, EXECUTION_PREFIX, EXECUTIONS_PREFIX, RESULTS_PREFIX, DEPENDENTS_SUFFIX,
                      DEPENDENCIES_SUFFIX]
        for pair in zip(ids, execution_ids):
            args.extend(pair)
        keys = [queue.started_job_registry.key, WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker_name)]
        self._finish(keys=keys, args=args, client=pipe)

    def release(self, queue: Queue, worker_name: str, ids: list[str], execution_ids: list[str]) -> None:
        """Queue started jobs again at the front of their queue, as they were before they were taken."""
        args: list = [JOB_PREFIX, EXECUTION_PREFIX, EXECUTIONS_PREFIX, JobStatus.QUEUED.value]
        for pair in zip(ids, execution_ids):
            args.extend(pair)
        keys = [queue.key, queue.started_job_registry.key, WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker_name)]
        self._release(keys=keys, args=args)


_ROW_FAILED = ROW_FAILED.encode()


def _row(reply: list, queue_name: str) -> RowTask | None:
    """The row a job carries if every field is exactly what csvembed enqueues, else None.

    The same checks as jobs.refusal, on the raw fields: nothing is imported, and anything unusual
    is left to the slow path, which judges it on a real Job.
    """
    if len(reply) != 6:
        return None
    _, data, origin, success, failure, stopped = reply
    if data is None or origin is None or origin.decode() != queue_name or success or stopped or failure not in (
            None, _ROW_FAILED):
        return None
    try:
        try:
            raw = zlib.decompress(data)
        except zlib.error:
            raw = data
        func, instance, args, kwargs = json.loads(raw.decode())
    except (ValueError, TypeError):
        return None
    if func != RowTask.FUNC or instance is not None or not RowTask.well_formed(args, kwargs):
        return None
    return RowTask(*args)
