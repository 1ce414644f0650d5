"""The batch scripts leave Redis exactly as RQ's own SimpleWorker path does, key by key and field by field.

Time is frozen, so the only difference allowed between the two paths is the random execution ids.
"""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timezone

import pytest
import redis
import rq.utils
from rq import Queue
from rq.registry import StartedJobRegistry

from conftest import stored_rows, write_csv
from csvembed import defaults
from csvembed.ingest import Ingestor
from csvembed.jobs import SERIALIZER, RowTask
from csvembed.store import open_store
from csvembed.submissions import SubmissionRecords
from csvembed.tasks import CsvembedJob
from csvembed.windows import Shape
from csvembed.worker import BatchWorker

FROZEN = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=timezone.utc)
EXECUTION_ID = re.compile(rb"[0-9a-f]{32}")


@pytest.fixture
def frozen(monkeypatch):
    """Every `now` RQ and the worker read returns FROZEN (rq.utils.current_timestamp included)."""
    original = rq.utils.now
    for module in list(sys.modules.values()):
        if (module.__name__.startswith(("rq", "csvembed"))) and getattr(module, "now", None) is original:
            monkeypatch.setattr(module, "now", lambda: FROZEN)


def dump(connection: redis.Redis) -> dict:
    """Every key: its type, its TTL in whole seconds, its content; execution ids replaced by one mark."""
    state = {}
    for key in sorted(connection.keys("*")):
        kind = connection.type(key).decode()
        content: object
        if kind == "hash":
            content = sorted(connection.hgetall(key).items())
        elif kind == "zset":
            content = sorted(connection.zrange(key, 0, -1, withscores=True))
        elif kind == "set":
            content = sorted(connection.smembers(key))
        elif kind == "list":
            content = connection.lrange(key, 0, -1)
        else:
            content = connection.get(key)
        pttl = connection.pttl(key)
        state[EXECUTION_ID.sub(b"<execution>", key)] = (
            kind, pttl if pttl < 0 else round(pttl / 1000), EXECUTION_ID.sub(b"<execution>", repr(content).encode()))
    return state


def assert_same_but_worker_ttl(ours: dict, by_rq: dict) -> None:
    """Equal dumps but for one deliberate difference: RQ gives the worker's own keys the job's heartbeat
    TTL when it starts a job; the batching worker keeps them WORKER_TTL + 60 s, as its heartbeat thread does."""
    for key in (b"rq:worker:host.1.abcd", b"rq:worker:host.1.abcd:executions"):
        if key in by_rq:
            assert (by_rq[key][1], ours[key][1]) == (defaults.HEARTBEAT_TTL, defaults.WORKER_TTL + 60)
            by_rq[key], ours[key] = by_rq[key][::2], ours[key][::2]
    assert ours == by_rq


def three_rows(env) -> Queue:
    """Three queued rows (no submission record: its scripts then write nothing, as RQ would not)."""
    from csvembed.enqueue import RowEnqueuer

    queue = Queue("csvembed", connection=env.connection, serializer=SERIALIZER, job_class=CsvembedJob)
    RowEnqueuer(queue).enqueue([RowTask("s1", n, f"r{n}", f"text {n}", [f"r{n}", f"text {n}"]) for n in (1, 2, 3)],
                               env.connection)
    return queue


def new_worker(env, fake_embedder) -> BatchWorker:
    ingestor = Ingestor(fake_embedder, open_store(env.db), SubmissionRecords(env.connection))
    return BatchWorker(["csvembed"], ingestor=ingestor, batch_size=8, name="host.1.abcd")


def dequeue(queue: Queue):
    return Queue.dequeue_any([queue], None, connection=queue.connection, job_class=CsvembedJob,
                             serializer=SERIALIZER)


def rq_start(env, fake_embedder) -> tuple[BatchWorker, list]:
    """RQ's own path up to the job function: dequeue, prepare_execution, prepare_job_execution."""
    queue = three_rows(env)
    worker = new_worker(env, fake_embedder)
    started = []
    for _ in range(3):
        job, _queue = dequeue(queue)
        execution = worker.prepare_execution(job)
        worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
        started.append((job, queue, execution))
    return worker, started


def our_start(env, fake_embedder):
    """The batching path: RQ's dequeue of the first job, then one script call that takes more and starts them all."""
    queue = three_rows(env)
    worker = new_worker(env, fake_embedder)
    job, _queue = dequeue(queue)
    taken, batch = worker._take_start(queue, job)
    assert taken and batch.ids == ["s1-1", "s1-2", "s1-3"]
    return worker, batch


def test_a_started_batch_is_what_rqs_own_start_writes(env, fake_embedder, frozen):
    rq_start(env, fake_embedder)
    by_rq = dump(env.connection)
    env.connection.flushall()
    our_start(env, fake_embedder)
    ours = dump(env.connection)

    assert_same_but_worker_ttl(ours, by_rq)
    assert {key for key in by_rq if b"execution" in key} == {
        b"rq:execution:s1-1:<execution>", b"rq:execution:s1-2:<execution>", b"rq:execution:s1-3:<execution>",
        b"rq:executions:s1-1", b"rq:executions:s1-2", b"rq:executions:s1-3", b"rq:worker:host.1.abcd:executions"}
    assert by_rq[b"rq:wip:csvembed"][:2] == ("zset", -1)


def test_a_finished_batch_leaves_what_rqs_perform_job_leaves_for_a_result_ttl_0_job(
        env, fake_embedder, frozen, monkeypatch):
    monkeypatch.setattr("csvembed.tasks.embed_row", lambda *args: None)  # what RQ would run
    worker, started = rq_start(env, fake_embedder)
    for job, queue, execution in started:
        worker.perform_job(job, queue, execution)  # prepares again (as SimpleWorker does), runs, succeeds
    by_rq = dump(env.connection)
    env.connection.flushall()
    worker, batch = our_start(env, fake_embedder)
    worker._finish(batch, [Shape(1, False)] * 3)
    ours = dump(env.connection)
    # csvembed's own addition beside RQ's keys: the batch's duration, for /metrics.
    [kind] = [ours.pop(key)[0] for key in list(ours) if key.startswith(b"csvembed:batch_seconds:")]
    assert kind == "hash"

    assert_same_but_worker_ttl(ours, by_rq)
    assert not [key for key in by_rq if b"s1-" in key or b"<execution>" in key]
    worker_hash = dict(env.connection.hgetall("rq:worker:host.1.abcd"))
    assert (worker_hash[b"successful_job_count"], worker_hash[b"total_working_time"]) == (b"3", b"0")


def test_a_worker_killed_between_start_and_finish_leaves_its_rows_to_the_15s_requeue(
        env, submit, drain, fake_embedder):
    path = write_csv(env.dir / "p.csv", "id,text\na,first row\nb,second row\nc,third row\n")
    result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    queue = Queue(result.queue, connection=env.connection, serializer=SERIALIZER, job_class=CsvembedJob)
    worker = new_worker(env, fake_embedder)
    job, _queue = dequeue(queue)
    _taken, batch = worker._take_start(queue, job)
    # The worker dies here: its rows are started, held by nobody, until their heartbeats lapse.
    registry = StartedJobRegistry(result.queue, connection=env.connection, job_class=CsvembedJob,
                                  serializer=SERIALIZER)
    (expires_at,) = {score for _, score in env.connection.zrange(registry.key, 0, -1, withscores=True)}
    assert 14 < expires_at - time.time() <= 15
    registry.cleanup(timestamp=expires_at - 1)
    assert (env.connection.zcard(registry.key), queue.count) == (3, 0)

    registry.cleanup(timestamp=expires_at)  # RQ's own cleanup, as any worker's maintenance runs it
    assert (sorted(queue.get_job_ids()), env.connection.zcard(registry.key)) == (sorted(batch.ids), 0)
    assert [CsvembedJob.fetch(i, connection=env.connection, serializer=SERIALIZER).retries_left
            for i in batch.ids] == [2, 2, 2]

    drain(batch_size=8, model=fake_embedder)
    assert sorted(row_id for _, row_id, *_ in stored_rows(env)) == ["a", "b", "c"]
    assert SubmissionRecords(env.connection).snapshot(result.id).done == 3
    assert not [key for key in env.connection.keys("rq:job:*")]
