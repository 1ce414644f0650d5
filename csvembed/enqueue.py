"""Enqueue many row-jobs at once, writing exactly the job hashes that Queue.enqueue_many writes.

RQ builds a Job object, a dict and ~40 packed arguments per job in Python: about 10k jobs/s.
Row-jobs differ only in their id, their data (the arguments) and their description (the id), so
this takes every other field from one job that RQ itself prepared, and writes a chunk of jobs with
one Lua call that sends two arguments per job. tests/test_enqueue.py checks field by field that the
result equals RQ's own enqueue_many, so a change in RQ's job format fails loudly (rq is pinned to 3.0.0).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii

import redis
from redis.client import Pipeline
from rq import Queue
from rq.executions import ExecutionRegistry
from rq.job import Job
from rq.results import Result

from csvembed.jobs import RowTask
from csvembed.submissions import PREFIX, job_id

# The enqueue script's template job hash: it exists only inside one call of the script.
TEMPLATE_KEY = f"{PREFIX}:job-template"

# ARGV: the job key prefix, the number of shared fields, those fields, then per job its id and data.
# The shared fields are written once per call into a template hash that each job copies (COPY, Redis
# 6.2+), which then gets its own data and description: submitting 50,000 short titles then cost Redis
# about 6 µs of CPU a row against 13 with one 20-field HSET each (bench/producer_cost.py). A Redis
# without COPY gets the HSET. Either way a job hash is written whole, replacing any stale one, and the
# template lives only inside this atomic call.
_ENQUEUE = """
if #KEYS > 3 and redis.call('HGET', KEYS[4], 'state') ~= 'submitting' then return -1 end
local prefix, shared_count = ARGV[1], tonumber(ARGV[2])
local first = shared_count + 3
local shared = {}
for i = 3, first - 1 do shared[#shared + 1] = ARGV[i] end
redis.call('HSET', KEYS[3], 'data', '', 'description', '', unpack(shared))
local copy = type(redis.pcall('COPY', KEYS[3], KEYS[3] .. ':probe')) == 'number'
redis.call('DEL', KEYS[3] .. ':probe')
local ids = {}
for i = first, #ARGV, 2 do
  local id = ARGV[i]
  local key = prefix .. id
  if copy then
    redis.call('COPY', KEYS[3], key, 'REPLACE')
    redis.call('HSET', key, 'data', ARGV[i + 1], 'description', id)
  else
    redis.call('DEL', key)
    redis.call('HSET', key, 'data', ARGV[i + 1], 'description', id, unpack(shared))
  end
  ids[#ids + 1] = id
end
redis.call('DEL', KEYS[3])
if #ids > 0 then redis.call('RPUSH', KEYS[1], unpack(ids)) end
redis.call('SADD', KEYS[2], KEYS[1])
return #ids
"""

# Removes a submission's job ids from a queue list, and their job hashes, in one atomic step; returns the ids.
_WITHDRAW = """
local kept, removed = {}, {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if string.sub(id, 1, string.len(ARGV[1])) == ARGV[1] then removed[#removed + 1] = id else kept[#kept + 1] = id end
end
if #removed > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #kept, 5000 do redis.call('RPUSH', KEYS[1], unpack(kept, i, math.min(i + 4999, #kept))) end
  for _, id in ipairs(removed) do redis.call('DEL', ARGV[2] .. id) end
end
return removed
"""


def withdraw_queued(queue: Queue, submission_id: str) -> int:
    """Take a submission's queued (not started) jobs off the queue and delete them; returns how many."""
    prefix = job_id(submission_id, 0)[:-1]
    script = queue.connection.register_script(_WITHDRAW)
    return len(script(keys=[queue.key], args=[prefix, Job.key_for("")]))


def purge_jobs(queue: Queue, submission_id: str, last_row: int) -> int:
    """Remove every trace of a submission's jobs: queued ones, failed ones and their results.

    Returns how many job records existed. Started jobs are left to the worker that holds them:
    finishing them deletes their keys.
    """
    connection = queue.connection
    deleted = withdraw_queued(queue, submission_id)
    registries = [queue.failed_job_registry.key, queue.scheduled_job_registry.key, queue.deferred_job_registry.key,
                  queue.canceled_job_registry.key, queue.finished_job_registry.key]
    for start in range(1, last_row + 1, 1000):
        ids = [job_id(submission_id, n) for n in range(start, min(start + 1000, last_row + 1))]
        with connection.pipeline() as pipe:
            pipe.delete(*(Job.key_for(i) for i in ids))
            pipe.delete(*(key for i in ids for key in (Job.dependents_key_for(i), f"{Job.key_for(i)}:dependencies",
                                                        Result.get_key(i), ExecutionRegistry.key_template.format(i))))
            for registry in registries:
                pipe.zrem(registry, *ids)
            deleted += pipe.execute()[0]
    return deleted


# What json.dumps does to a str: RQ's JSONSerializer is json.dumps with no options (ensure_ascii on).
_json_string = encode_basestring_ascii


def job_payload(task: RowTask) -> bytes:
    """The job's data before compression, byte for byte what RQ's JSONSerializer makes of
    (function, instance, args, kwargs), written directly: json.dumps builds a new C encoder per call."""
    values = ", ".join(map(_json_string, task.values))
    return (f'["{RowTask.FUNC}", null, [{_json_string(task.submission_id)}, {task.row_number},'
            f' {_json_string(task.row_id)}, {_json_string(task.text)}, [{values}]], {{}}]').encode()


class RowEnqueuer:
    """Puts RowTasks on one queue in bulk, as RQ jobs indistinguishable from enqueue_many's."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._script = queue.connection.register_script(_ENQUEUE)

    def _shared_fields(self, prototype: RowTask) -> list:
        """Every field but data and description, from a job that RQ itself prepared for this queue."""
        data = prototype.enqueue_data()
        job = self.queue.create_job(
            data.func, args=data.args, kwargs=data.kwargs, timeout=data.timeout, result_ttl=data.result_ttl,
            ttl=data.ttl, failure_ttl=data.failure_ttl, description=data.description, job_id=data.job_id,
            retry=data.retry, on_failure=data.on_failure,
        )
        self.queue._prepare_for_queue(job)
        mapping = job.to_dict()
        flat: list = []
        for field, value in mapping.items():
            if field not in ("data", "description"):
                flat.extend((field, value))
        return flat

    def enqueue(
        self, tasks: Sequence[RowTask], pipeline: Pipeline | redis.Redis, record_key: str | None = None
    ) -> None:
        """Enqueue tasks; with record_key, only while that submission record is still submitting.

        Refused (the script replies -1) once the submission was deleted or withdrawn, atomically, so
        a running submit can never add jobs to a deleted submission.
        """
        if not tasks:
            return
        # Timestamps (created_at, enqueued_at) are shared by a chunk: they differ by microseconds in RQ.
        shared = self._shared_fields(tasks[0])
        args: list = [Job.key_for(""), len(shared), *shared]
        for task in tasks:
            args.append(task.job_id)
            args.append(zlib.compress(job_payload(task)))
        keys = [self.queue.key, self.queue.redis_queues_keys, TEMPLATE_KEY, *([record_key] if record_key else [])]
        self._script(keys=keys, args=args, client=pipeline)
