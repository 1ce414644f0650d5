"""Take and start a whole batch of row-jobs with one Lua call, and finish it with another.

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
import json.scanner
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError
from rq import Queue, Worker
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.results import Result
from rq.suspension import WORKERS_SUSPENDED
from rq.utils import utcformat
from rq.worker import WorkerStatus

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

# Per job, what Execution.create, Job.heartbeat, Job.prepare_for_execution and the PERSIST of
# Worker.prepare_job_execution write; its started-registry entry is collected in `scored` and `composites`
# for one ZADD and one SADD per batch. It reads the locals both start scripts declare before it (name,
# stamp, utc, ttl, started_score, execution_score, job_prefix, execution_prefix, executions_prefix, status).
_START_ONE = """
local function start_one(id, eid, scored, composites)
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
  redis.call('HSET', job_prefix .. id, 'last_heartbeat', utc, 'status', status, 'started_at', utc, 'worker_name', name)
  redis.call('PERSIST', job_prefix .. id)
end
"""

# Takes a batch and starts it, in one call: the job RQ dequeued (ARGV[2], already on the intermediate
# queue; '' for none) and up to ARGV[1] more from the queue (as RQ's dequeue, one LMOVE each, then its
# prepare_job_execution would; the ids go straight from the queue to the started registry, so a crash at
# any point leaves each in one place that RQ's cleanup looks at). Per job, what Execution.create,
# Job.heartbeat, Job.prepare_for_execution and the PERSIST and LREM of Worker.prepare_job_execution
# write, then the worker's heartbeat. Only a job whose raw fields are exactly what csvembed enqueues is
# started (its data still to be judged by the worker); any other hash is parked on the intermediate
# queue for the worker to fetch as a Job and judge; an id without a job hash (deleted while queued) or
# with a key that is no hash is dropped. Returns {id, data, id, data, ...} of the started jobs (the n-th
# started gets the n-th 32-character execution id of ARGV[15]) and the ids of the parked ones. The worker's
# heartbeat and state (busy) are written with them, as RQ's prepare_job_execution writes them.
# Before taking more (no ARGV[2]), it takes nothing while workers are suspended (KEYS[6]) or a queue the
# worker listens on first (KEYS[7...]) has rows: RQ's own loop then decides, as it would between jobs.
_TAKE_START = r"""
local limit, first, name = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local stamp, utc, ttl = ARGV[4], ARGV[5], tonumber(ARGV[6])
local started_score, execution_score = ARGV[7], ARGV[8]
local job_prefix, execution_prefix, executions_prefix, status = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local origin, row_failed, eids, beat_ttl = ARGV[13], ARGV[14], ARGV[15], ARGV[16]
""" + _START_ONE + r"""if first == '' then
  if redis.call('EXISTS', KEYS[6]) == 1 then return {{}, {}} end
  for i = 7, #KEYS do
    if redis.call('LLEN', KEYS[i]) > 0 then return {{}, {}} end
  end
end
local ids = {}
if first ~= '' then ids[1] = first end
if limit > 0 then
  local more = redis.call('LRANGE', KEYS[1], 0, limit - 1)
  if #more > 0 then redis.call('LTRIM', KEYS[1], #more, -1) end
  for _, id in ipairs(more) do ids[#ids + 1] = id end
end
if #ids == 0 then return {{}, {}} end
local started, parked, scored, composites, queued = {}, {}, {}, {}, {}
for i, id in ipairs(ids) do
  local job_key = job_prefix .. id
  local f = redis.pcall('HMGET', job_key, 'data', 'origin', 'success_callback_name', 'failure_callback_name',
                        'stopped_callback_name')
  if f['err'] or not (f[1] or f[2]) then
    if i == 1 and first ~= '' then redis.call('LREM', KEYS[2], 1, id) end
  elseif f[1] and f[2] == origin and (not f[3] or f[3] == '') and (not f[5] or f[5] == '')
         and (not f[4] or f[4] == row_failed) then
    local n = #composites + 1
    start_one(id, string.sub(eids, n * 32 - 31, n * 32), scored, composites)
    if i == 1 and first ~= '' then redis.call('LREM', KEYS[2], 1, id) end
    started[#started + 1] = id
    started[#started + 1] = f[1]
  else
    parked[#parked + 1] = id
    if not (i == 1 and first ~= '') then queued[#queued + 1] = id end
  end
end
""" + _IN_CHUNKS + r"""
in_chunks('RPUSH', KEYS[2], queued)
in_chunks('ZADD', KEYS[3], scored)
in_chunks('SADD', KEYS[4], composites)
redis.call('HSET', KEYS[5], 'last_heartbeat', utc, 'state', ARGV[17])
redis.call('EXPIRE', KEYS[5], beat_ttl)
redis.call('EXPIRE', KEYS[4], beat_ttl)
return {started, parked}
"""

# For jobs the take script parked and the worker then judged to be rows after all (the rare path): per
# job, what Execution.create, Job.heartbeat, Job.prepare_for_execution and the PERSIST and LREM
# of Worker.prepare_job_execution write. A job whose hash was deleted meanwhile (its submission
# withdrawn) is only taken off the intermediate queue: writing its fields would re-create a
# fragment of it. Returns the ids of those.
_START = """
local name, stamp, utc, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local started_score, execution_score = ARGV[5], ARGV[6]
local job_prefix, execution_prefix, executions_prefix, status = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
""" + _START_ONE + """local gone, scored, composites = {}, {}, {}
for i = 11, #ARGV, 2 do
  local id, eid = ARGV[i], ARGV[i + 1]
  local job_key = job_prefix .. id
  if redis.call('EXISTS', job_key) == 1 then
    start_one(id, eid, scored, composites)
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
local composites, keys, rare = {}, {}, {}
local n = 0
for i = 7, #ARGV, 2 do
  local id, eid = ARGV[i], ARGV[i + 1]
  local composite = id .. ':' .. eid
  local job_key = job_prefix .. id
  composites[#composites + 1] = composite
  keys[n + 1], keys[n + 2], keys[n + 3] = execution_prefix .. composite, job_key, executions_prefix .. id
  rare[n + 1], rare[n + 2], rare[n + 3] = job_key .. dependents, job_key .. dependencies, results_prefix .. id
  n = n + 3
end
""" + _IN_CHUNKS + """
in_chunks('ZREM', KEYS[1], composites)
in_chunks('SREM', KEYS[2], composites)
in_chunks('DEL', nil, keys)
-- A job's dependents, dependencies and results exist only for jobs that have them (no row has): deleted
-- where they exist, so that the AOF is not written a DEL of keys that are not there.
for first = 1, #rare, 1000 do
  local last = math.min(first + 999, #rare)
  if redis.call('EXISTS', unpack(rare, first, last)) > 0 then redis.call('DEL', unpack(rare, first, last)) end
end
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
    """What one take-and-start call got: the started jobs (ids, their raw data, their execution ids) and the
    ids parked on the intermediate queue for the worker to judge as Jobs."""

    ids: list[str]
    data: list[bytes]
    execution_ids: list[str]
    parked: list[str]

    def __bool__(self) -> bool:
        return bool(self.ids or self.parked)


class TakeStart:
    """One call of the take-and-start script: `send` it, alone or in a pipeline, and read its reply with `taken`.

    Takes `first` (dequeued by RQ) and up to `limit` more queued jobs, and starts those that look like rows;
    without `first`, nothing is taken while workers are suspended or one of `queues_first` has rows.
    """

    def __init__(self, scripts: BatchScripts, queue: Queue, worker_name: str, ttl: int, beat_ttl: int,
                 first: str | None, limit: int, at: datetime, queues_first: Sequence[Queue] = ()) -> None:
        self._script = scripts._take_start
        self.at = at
        stamp = int(at.timestamp())
        # What uuid4().hex gives RQ, at a fraction of the cost: the n-th started job gets the n-th 32 digits.
        self._execution_ids = os.urandom(16 * (limit + 1)).hex()
        self._args = [limit, first or "", worker_name, at.timestamp(), utcformat(at), ttl, stamp + ttl,
                      stamp + ttl + 60, JOB_PREFIX, EXECUTION_PREFIX, EXECUTIONS_PREFIX, JobStatus.STARTED.value,
                      queue.name, ROW_FAILED, self._execution_ids, beat_ttl, WorkerStatus.BUSY.value]
        self._keys = [queue.key, queue.intermediate_queue_key, queue.started_job_registry.key,
                      WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker_name),
                      Worker.redis_worker_namespace_prefix + worker_name, WORKERS_SUSPENDED,
                      *(other.key for other in queues_first)]

    def send(self, client: redis.Redis | Pipeline):
        """The script's reply, or (in a pipeline) the pipeline itself."""
        return self._script(keys=self._keys, args=self._args, client=client)

    def taken(self, reply: list) -> Taken:
        started, parked = reply
        ids = [raw.decode() for raw in started[::2]]
        execution_ids = self._execution_ids
        return Taken(ids, started[1::2], [execution_ids[32 * i:32 * i + 32] for i in range(len(ids))],
                     [raw.decode() for raw in parked])


def run_pipeline(pipe: Pipeline) -> list:
    """Execute a pipeline that calls scripts without redis-py's SCRIPT EXISTS round trip before it.

    A script Redis no longer has (it restarted, or SCRIPT FLUSH) fails alone with NOSCRIPT, inside the
    transaction too: it is loaded, and the commands that failed so are run again, in their order. Any other
    error raises, as Pipeline.execute does.
    """
    scripts = {script.sha: script for script in pipe.scripts}
    pipe.scripts.clear()
    commands = list(pipe.command_stack)
    replies = pipe.execute(raise_on_error=False)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        connection = redis.Redis(connection_pool=pipe.connection_pool)
        for sha in {commands[i][0][1] for i in missing}:
            connection.script_load(scripts[sha].script)
        with connection.pipeline() as again:
            for i in missing:
                args, options = commands[i]
                again.execute_command(*args, **options)
            for i, reply in zip(missing, again.execute(raise_on_error=False)):
                replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


class BatchScripts:
    """The scripts, registered once per connection."""

    def __init__(self, connection: redis.Redis) -> None:
        self._take_start = connection.register_script(_TAKE_START)
        self._start = connection.register_script(_START)
        self._finish = connection.register_script(_FINISH)
        self._release = connection.register_script(_RELEASE)

    def start(self, pipe: Pipeline, queue: Queue, worker_name: str, ttl: int, ids: list[str],
              execution_ids: list[str], at: datetime) -> None:
        """Start jobs already on the intermediate queue (the worker judged them as Jobs) in `pipe`; its reply is
        the ids whose job was deleted meanwhile (not started)."""
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


# json.loads without its Python layers (it runs per row): the C scanner of the default decoder.
_scan = json.scanner.make_scanner(json.JSONDecoder())
_FUNC = RowTask.FUNC


def row_of(data: bytes) -> RowTask | None:
    """The row a started job's data carries if it is exactly what csvembed enqueues, else None (the worker then
    judges it as a Job, as RQ would read it: nothing it names is imported).

    Its other fields were checked by the take script; these are the checks of jobs.refusal on the data.
    """
    try:
        try:
            raw = zlib.decompress(data)
        except zlib.error:
            raw = data
        text = raw.decode()
        parsed, end = _scan(text, 0)
        if end != len(text):
            return None
        func, instance, args, kwargs = parsed
    except (ValueError, TypeError, StopIteration):
        return None
    if func != _FUNC or instance is not None or not RowTask.well_formed(args, kwargs):
        return None
    return RowTask(*args)
