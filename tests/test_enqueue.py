"""The bulk enqueue path writes the same jobs as RQ's own Queue.enqueue_many."""

from __future__ import annotations

import zlib

import pytest
import redis
from rq import Queue
from rq.job import Job

from conftest import start_redis
from csvembed.enqueue import RowEnqueuer, job_payload
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


# What enqueueing rows 1 and 2 of sub1 on queue by-us leaves in an empty Redis: no template, nothing else.
EVERY_KEY = [b"rq:job:sub1-1", b"rq:job:sub1-2", b"rq:queue:by-us", b"rq:queues"]


def _rq_hash(connection, task: RowTask) -> dict:
    """The job hash RQ's own enqueue_many writes for `task` (into no hash), less what differs by queue and time."""
    connection.delete(Job.key_for(task.job_id))
    Queue("by-rq", connection=connection, serializer=SERIALIZER).enqueue_many([task.enqueue_data()])
    written = connection.hgetall(Job.key_for(task.job_id))
    connection.delete(Job.key_for(task.job_id), "rq:queue:by-rq")
    return _comparable(written)


def _comparable(job_hash: dict) -> dict:
    volatile = {b"created_at", b"enqueued_at", b"origin", b"data"}
    return {**{k: v for k, v in job_hash.items() if k not in volatile}, b"data": zlib.decompress(job_hash[b"data"])}


@pytest.mark.parametrize("values", [
    ["plain", "", "ünïcode ✓ 𝄞", 'quote " and back\\slash', "tab\tnew\nline\r\x01\x1f\x7f", "</script>", "\u2028"],
    [],
])
def test_the_payload_is_byte_for_byte_rqs_json(values):
    task = RowTask("sub1", 12345, 'id "1" ✓', "text\n" + "".join(values), values)
    assert job_payload(task) == SERIALIZER.dumps((RowTask.FUNC, None, task.args, {}))


def test_the_enqueue_script_leaves_only_the_jobs_and_replaces_a_stale_hash(env):
    tasks = [RowTask("sub1", n, f"id{n}", f"row {n}", [f"id{n}"]) for n in (1, 2)]
    env.connection.hset(Job.key_for("sub1-2"), mapping={"status": "failed", "exc_info": "old"})
    queue = Queue("by-us", connection=env.connection, serializer=SERIALIZER)
    RowEnqueuer(queue).enqueue(tasks, env.connection)
    assert sorted(env.connection.keys()) == EVERY_KEY
    assert _comparable(env.connection.hgetall(Job.key_for("sub1-2"))) == _rq_hash(env.connection, tasks[1])


def test_a_redis_without_copy_gets_the_same_jobs(env, tmp_path):
    """Redis before 6.2 has no COPY: the script writes each job whole instead, with the same fields."""
    process, url = start_redis(tmp_path, "--rename-command", "COPY", "")
    try:
        old = redis.Redis.from_url(url)
        assert "unknown command" in str(pytest.raises(redis.ResponseError, old.execute_command, "COPY", "a", "b").value)
        tasks = [RowTask("sub1", n, f"id{n}", f"row {n}", [f"id{n}", "ü"]) for n in (1, 2)]
        old.hset(Job.key_for("sub1-2"), mapping={"status": "failed", "exc_info": "old"})
        RowEnqueuer(Queue("by-us", connection=old, serializer=SERIALIZER)).enqueue(tasks, old)
        assert sorted(old.keys()) == EVERY_KEY
        assert old.lrange("rq:queue:by-us", 0, -1) == [b"sub1-1", b"sub1-2"]
        for task in tasks:
            assert _comparable(old.hgetall(Job.key_for(task.job_id))) == _rq_hash(env.connection, task)
    finally:
        process.terminate()
        process.wait(10)
