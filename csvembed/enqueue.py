"""Enqueue many row-jobs at once, writing exactly the job hashes that Queue.enqueue_many writes.

RQ builds a Job object, a dict and ~40 packed arguments per job in Python: about 10k jobs/s.
Row-jobs differ only in their id, their data (the arguments) and their description, so this
takes every other field from one job that RQ itself prepared, and writes a chunk of jobs with
one Lua call. tests/test_enqueue.py checks field by field that the result equals RQ's own
enqueue_many, so a change in RQ's job format fails loudly (rq is pinned to 3.0.0).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import redis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job

from csvembed.jobs import SERIALIZER, RowTask
from csvembed.progress import job_id

_ENQUEUE = """
local shared_count = tonumber(ARGV[1])
local shared = {}
for i = 2, shared_count + 1 do shared[#shared + 1] = ARGV[i] end
local ids = {}
for i = shared_count + 2, #ARGV, 4 do
  redis.call('HSET', ARGV[i], 'data', ARGV[i + 2], 'description', ARGV[i + 3], unpack(shared))
  ids[#ids + 1] = ARGV[i + 1]
end
if #ids > 0 then redis.call('RPUSH', KEYS[1], unpack(ids)) end
redis.call('SADD', KEYS[2], KEYS[1])
return #ids
"""


# Removes a submission's job ids from a queue list in one atomic step.
_WITHDRAW = """
local kept, removed = {}, 0
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if string.sub(id, 1, string.len(ARGV[1])) == ARGV[1] then removed = removed + 1 else kept[#kept + 1] = id end
end
if removed > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #kept, 5000 do redis.call('RPUSH', KEYS[1], unpack(kept, i, math.min(i + 4999, #kept))) end
end
return removed
"""


def withdraw(queue: Queue, submission_id: str, last_row: int) -> int:
    """Take a submission's jobs off the queue and delete them; returns how many job records existed."""
    prefix = job_id(submission_id, 0)[:-1]
    queue.connection.register_script(_WITHDRAW)(keys=[queue.key], args=[prefix])
    deleted = 0
    for start in range(1, last_row + 1, 1000):
        keys = [Job.key_for(job_id(submission_id, n)) for n in range(start, min(start + 1000, last_row + 1))]
        deleted += queue.connection.delete(*keys)
    return deleted


class RowEnqueuer:
    """Puts RowTasks on one queue in bulk, as RQ jobs indistinguishable from enqueue_many's."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._script = queue.connection.register_script(_ENQUEUE)
        self._shared: list[bytes | str] = []

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

    def enqueue(self, tasks: Sequence[RowTask], pipeline: Pipeline | redis.Redis) -> None:
        if not tasks:
            return
        # Timestamps (created_at, enqueued_at) are shared by a chunk: they differ by microseconds in RQ.
        shared = self._shared_fields(tasks[0])
        args: list = [len(shared), *shared]
        for task in tasks:
            job_id = task.job_id
            payload = SERIALIZER.dumps((RowTask.FUNC, None, task.args, {}))
            args.extend((Job.key_for(job_id), job_id, zlib.compress(payload), job_id))
        self._script(keys=[self.queue.key, self.queue.redis_queues_keys], args=args, client=pipeline)
