"""The bulk enqueue path writes the same jobs as RQ's own Queue.enqueue_many."""

from __future__ import annotations

import zlib

from rq import Queue
from rq.job import Job

from csvembed.enqueue import RowEnqueuer
from csvembed.jobs import SERIALIZER, RowTask


def test_bulk_enqueue_writes_what_rq_writes(env):
    tasks = [RowTask("sub1", n, f"id{n}", f"text of row {n}, with ünïcode", [f"id{n}", "x", ""]) for n in (1, 2, 3)]
    rq_queue = Queue("by-rq", connection=env.connection, serializer=SERIALIZER)
    rq_queue.enqueue_many([task.enqueue_data() for task in tasks[:1]])
    rq_hash = env.connection.hgetall(Job.key_for("sub1-1"))
    env.connection.delete(Job.key_for("sub1-1"))

    ours = Queue("by-us", connection=env.connection, serializer=SERIALIZER)
    with env.connection.pipeline() as pipe:
        RowEnqueuer(ours).enqueue(tasks, pipe)
        pipe.execute()
    our_hash = env.connection.hgetall(Job.key_for("sub1-1"))

    volatile = {b"created_at", b"enqueued_at", b"origin", b"data"}
    assert {k: v for k, v in our_hash.items() if k not in volatile} == {
        k: v for k, v in rq_hash.items() if k not in volatile}
    assert set(our_hash) == set(rq_hash)
    assert zlib.decompress(our_hash[b"data"]) == zlib.decompress(rq_hash[b"data"])
    assert (our_hash[b"origin"], rq_hash[b"origin"]) == (b"by-us", b"by-rq")
    assert env.connection.lrange(ours.key, 0, -1) == [b"sub1-1", b"sub1-2", b"sub1-3"]
    assert ours.key.encode() in env.connection.smembers("rq:queues")

    job = Job.fetch("sub1-3", connection=env.connection, serializer=SERIALIZER)
    assert RowTask.from_job(job) == tasks[2]
    assert (job.get_status(), job.retries_left, job.result_ttl, job.description) == ("queued", 3, 0, "sub1-3")
