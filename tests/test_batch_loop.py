"""The worker's batch loop (issue #11): batch after batch inside one RQ job, each finish on the Redis thread beside
the next batch, the next batch taken ahead with a fast model. Every guarantee of the one-batch-at-a-time worker
holds: a row is marked done only after its transaction committed, every batch held is kept alive, a stop gives
back what was taken ahead, a failed finish surfaces and leaves its rows to the requeue, a script Redis lost is
loaded again without a finish lost or counted twice, and RQ's own loop still decides between queues."""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytest
import redis
from rq import Callback, Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from conftest import FAKE_QUEUE, store_counts, stored_rows, wait_until, write_csv
from csvembed import defaults
from csvembed.batch_scripts import BatchScripts
from csvembed.enqueue import RowEnqueuer
from csvembed.ingest import Ingestor
from csvembed.jobs import MALFORMED, NOT_OURS, ROW_FAILED, SERIALIZER, RowTask
from csvembed.store import open_store
from csvembed.submissions import SubmissionRecords
from csvembed.tasks import CsvembedJob
from csvembed.worker import BatchWorker
from doubles import HookedEmbedder


def twelve_rows(env, submit, fake_embedder):
    path = write_csv(env.dir / "twelve.csv", "id,text\n" + "".join(f"{i},row number {i}\n" for i in range(1, 13)))
    return submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))


def worker_for(env, model, store=None, batch_size: int = 4, queues: tuple[str, ...] = (FAKE_QUEUE,)) -> BatchWorker:
    worker = BatchWorker(list(queues), ingestor=Ingestor(model, store or open_store(env.db),
                                                         SubmissionRecords(env.connection)), batch_size=batch_size)
    if isinstance(model, HookedEmbedder):
        model.worker = worker
    return worker


def started(env) -> dict[bytes, float]:
    return dict(env.connection.zrange(f"rq:wip:{FAKE_QUEUE}", 0, -1, withscores=True))


def test_every_batch_held_is_kept_alive_the_one_taken_ahead_too(env, submit, fake_embedder):
    result = twelve_rows(env, submit, fake_embedder)
    beaten: list[dict[bytes, float]] = []

    def beat_while_two_are_held(worker: BatchWorker) -> None:
        # Batch 2 is being embedded; with a fast model batch 3 is taken meanwhile (and batch 1, stored on the
        # store's thread meanwhile, is finished).
        wait_until(lambda: len(started(env)) == 8 and SubmissionRecords(env.connection).snapshot(result.id).done == 4,
                   "the batch after this one taken ahead")
        assert len(worker._held) == 2
        env.connection.zadd(f"rq:wip:{FAKE_QUEUE}", dict.fromkeys(started(env), 1))  # as if about to lapse
        worker._refresh_held()
        beaten.append(started(env))

    worker = worker_for(env, HookedEmbedder(fake_embedder, 2, beat_while_two_are_held))
    worker.work(burst=True, logging_level="WARNING")
    [scores] = beaten
    assert len(scores) == 8 and min(scores.values()) > time.time()
    assert SubmissionRecords(env.connection).snapshot(result.id).done == 12


def test_a_stop_gives_back_the_batch_taken_ahead_in_its_queue_order(env, submit, fake_embedder):
    result = twelve_rows(env, submit, fake_embedder)
    queued = env.connection.lrange(f"rq:queue:{FAKE_QUEUE}", 0, -1)

    def stop_with_a_batch_taken_ahead(worker: BatchWorker) -> None:
        wait_until(lambda: len(started(env)) == 8, "the batch after this one taken ahead")
        worker.request_stop(signal.SIGTERM, None)  # as the signal handler gets it

    worker = worker_for(env, HookedEmbedder(fake_embedder, 2, stop_with_a_batch_taken_ahead))
    worker.work(burst=True, logging_level="WARNING")
    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.done, snapshot.pending) == (8, 4)  # the batch being embedded was stored and finished
    assert env.connection.lrange(f"rq:queue:{FAKE_QUEUE}", 0, -1) == queued[8:]  # back in front, in order
    for job_id in queued[8:]:
        assert env.connection.hmget(b"rq:job:" + job_id, "status", "retries_left", "worker_name") == [
            b"queued", str(defaults.MAX_RETRIES).encode(), None]
    assert (started(env), env.connection.keys("rq:execution:*")) == ({}, [])
    assert store_counts(env) == (8, 8)


class CommitsRecorded:
    """The real store; each write checks that no row is marked done that a committed write did not store."""

    def __init__(self, store, connection, submission_id: str) -> None:
        self.store, self.records, self.submission_id = store, SubmissionRecords(connection), submission_id
        self.committed = 0
        self.done_seen: list[int] = []

    def write(self, rows, vectors) -> None:
        self.done_seen.append(self.records.snapshot(self.submission_id).done)
        assert self.done_seen[-1] <= self.committed
        self.store.write(rows, vectors)
        self.committed += len(rows)

    def __getattr__(self, name):
        return getattr(self.store, name)


class WaitsForTheNextModelCall:
    """The real store, whose first write waits (up to 5 s) for the model call of the batch after it."""

    def __init__(self, store) -> None:
        self.store = store
        self.next_call = threading.Event()
        self.overlapped: list[bool] = []

    def write(self, rows, vectors) -> None:
        if not self.overlapped:
            self.overlapped.append(self.next_call.wait(5))
        self.store.write(rows, vectors)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_batch_is_stored_while_the_next_is_embedded(env, submit, fake_embedder):
    # A GPU's model calls need not wait for the store's writes: batch 2 is embedded while batch 1 is written.
    result = twelve_rows(env, submit, fake_embedder)
    store = WaitsForTheNextModelCall(open_store(env.db))
    model = HookedEmbedder(fake_embedder, 2, lambda worker: store.next_call.set())
    model.device = "cuda"  # a model on a device (on the CPU, where the model uses every core, batches alternate)
    worker_for(env, model, store=store).work(burst=True, logging_level="WARNING")
    assert store.overlapped == [True]
    assert SubmissionRecords(env.connection).snapshot(result.id).done == 12
    assert store_counts(env) == (12, 12)


class SlowWrites:
    """The real store, each write 0.2 s slower."""

    def __init__(self, store) -> None:
        self.store = store

    def write(self, rows, vectors) -> None:
        time.sleep(0.2)
        self.store.write(rows, vectors)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_batchs_log_line_counts_its_write(env, submit, fake_embedder, caplog, device):
    # The line a finish logs is written on the Redis thread, after the store's thread committed the batch.
    twelve_rows(env, submit, fake_embedder)
    model = HookedEmbedder(fake_embedder, 0, None)
    model.device = device
    with caplog.at_level(logging.INFO, logger="csvembed.worker"):
        worker_for(env, model, store=SlowWrites(open_store(env.db))).work(burst=True, logging_level="WARNING")
    seconds = [float(line.split(" in ")[1].removesuffix(" s")) for line in caplog.messages if "rows stored" in line]
    assert len(seconds) == 3 and min(seconds) >= 0.2, seconds


def test_a_row_is_marked_done_only_after_its_transaction_committed(env, submit, fake_embedder):
    path = write_csv(env.dir / "many.csv", "id,text\n" + "".join(f"{i},row {i}\n" for i in range(1, 201)))
    result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    store = CommitsRecorded(open_store(env.db), env.connection, result.id)
    worker_for(env, fake_embedder, store=store, batch_size=8).work(burst=True, logging_level="WARNING")
    assert store.committed == 200 and len(store.done_seen) == 25
    assert SubmissionRecords(env.connection).snapshot(result.id).done == 200
    assert store_counts(env) == (200, 200)


def test_a_failed_finish_surfaces_and_leaves_its_rows_to_the_requeue(env, submit, fake_embedder, monkeypatch,
                                                                     caplog):
    result = twelve_rows(env, submit, fake_embedder)
    finish = BatchScripts.finish

    def failing_finish(self, pipe, queue, worker_name, ids, execution_ids):
        if len(ids) == 4 and not failing_finish.failed:  # the first batch's finish
            failing_finish.failed = list(ids)
            raise redis.ResponseError("the finish failed")
        finish(self, pipe, queue, worker_name, ids, execution_ids)

    failing_finish.failed = []
    monkeypatch.setattr(BatchScripts, "finish", failing_finish)
    worker = worker_for(env, fake_embedder)
    with caplog.at_level(logging.ERROR):
        worker.work(burst=True, logging_level="WARNING")
    assert "the finish failed" in caplog.text  # the worker stopped on it, as RQ stops on any unhandled error
    assert worker._held == []  # no heartbeat keeps its rows
    registry = StartedJobRegistry(FAKE_QUEUE, connection=env.connection, job_class=CsvembedJob, serializer=SERIALIZER)
    # The batch whose finish failed is stored, not finished: left to the requeue. So may be the next one, whose
    # write was under way (a batch is stored while the next is embedded); no row is lost between them.
    left = set(registry.get_job_ids())
    assert set(failing_finish.failed) <= left and len(left) in (4, 8)
    done = SubmissionRecords(env.connection).snapshot(result.id).done
    assert done + len(left) + env.connection.llen(f"rq:queue:{FAKE_QUEUE}") == 12

    registry.cleanup(timestamp=time.time() + defaults.HEARTBEAT_TTL + 1)  # any worker's maintenance, once lapsed
    worker_for(env, fake_embedder).work(burst=True, logging_level="WARNING")
    assert SubmissionRecords(env.connection).snapshot(result.id).done == 12
    assert store_counts(env) == (12, 12)  # stored again, once
    assert (env.connection.keys("rq:job:*"), registry.count) == ([], 0)


def test_scripts_that_redis_lost_are_loaded_again_and_no_finish_is_lost_or_counted_twice(env, submit,
                                                                                          fake_embedder):
    result = twelve_rows(env, submit, fake_embedder)
    flushed = HookedEmbedder(fake_embedder, 2, lambda worker: env.connection.script_flush())
    worker = worker_for(env, flushed)
    worker.work(burst=True, logging_level="WARNING")
    errors = env.connection.info("errorstats")
    assert errors.get("errorstat_NOSCRIPT", {}).get("count", 0) > 0  # the scripts were missing, once at least
    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.done, snapshot.failed, snapshot.rows_whole, snapshot.state) == (12, 0, 12, "done")
    assert env.connection.hget(worker.key, "successful_job_count") == b"12"
    assert (env.connection.keys("rq:job:*"), started(env)) == ([], {})
    assert store_counts(env) == (12, 12)


def test_more_batches_are_taken_only_while_no_queue_listed_first_has_rows_and_none_is_suspended(env, fake_embedder):
    first, second = (Queue(name, connection=env.connection, serializer=SERIALIZER, job_class=CsvembedJob)
                     for name in ("first", "second"))
    RowEnqueuer(second).enqueue([RowTask("s1", n, f"r{n}", f"text {n}", [f"r{n}", f"text {n}"]) for n in range(1, 11)],
                                env.connection)
    worker = worker_for(env, fake_embedder, queues=("first", "second"))
    job, _queue = Queue.dequeue_any([second], None, connection=env.connection, job_class=CsvembedJob,
                                    serializer=SERIALIZER)
    taken, batch = worker._take_start(second, job)
    assert taken and len(batch.ids) == 4

    RowEnqueuer(first).enqueue([RowTask("s2", 1, "x", "urgent", ["x", "urgent"])], env.connection)
    assert worker._take_start(second, None) == (False, None)  # RQ's loop takes from `first` next
    env.connection.delete(first.key)
    env.connection.set("rq:suspended", 1)  # `rq suspend`
    assert worker._take_start(second, None) == (False, None)
    env.connection.delete("rq:suspended")
    taken, batch = worker._take_start(second, None)
    assert taken and len(batch.ids) == 4 and second.count == 2


def test_jobs_refused_in_a_batch_leave_no_execution_behind(env, submit, fake_embedder):
    path = write_csv(env.dir / "p.csv", "id,text\na,first row\nb,second row\n")
    result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    queue = Queue(FAKE_QUEUE, connection=env.connection, serializer=SERIALIZER)
    foreign = queue.enqueue("os.system", "true")  # parked: its fields are not a row's
    malformed = queue.enqueue(RowTask.FUNC, result.id, "2", "b", "text", [], on_failure=Callback(ROW_FAILED))
    worker_for(env, fake_embedder, batch_size=8).work(burst=True, logging_level="WARNING")

    failed = FailedJobRegistry(FAKE_QUEUE, connection=env.connection, serializer=SERIALIZER)
    assert sorted(failed.get_job_ids()) == sorted([foreign.id, malformed.id])
    reasons = {job_id: CsvembedJob.fetch(job_id, connection=env.connection, serializer=SERIALIZER).latest_result()
               .exc_string for job_id in (foreign.id, malformed.id)}
    assert reasons == {foreign.id: NOT_OURS, malformed.id: MALFORMED}
    assert (env.connection.keys("rq:execution:*"), env.connection.keys("rq:executions:*"), started(env)) == ([], [], {})
    assert env.connection.llen(queue.intermediate_queue_key) == 0
    assert sorted(row_id for _, row_id, *_ in stored_rows(env)) == ["a", "b"]


@pytest.mark.parametrize("ahead", [False, True])
def test_a_slow_model_takes_nothing_ahead(env, submit, fake_embedder, monkeypatch, ahead):
    # Holding a batch that waits while a slow model embeds another keeps it from the other workers for as long.
    monkeypatch.setattr("csvembed.worker.PREFETCH_BELOW", 10.0 if ahead else 0.0)
    twelve_rows(env, submit, fake_embedder)
    held: list[int] = []

    def count_held(worker: BatchWorker) -> None:
        time.sleep(0.2)  # a take ahead, if any, is done by now
        held.append(len(started(env)))

    worker_for(env, HookedEmbedder(fake_embedder, 2, count_held)).work(burst=True, logging_level="WARNING")
    assert held == [8 if ahead else 4]


def test_a_row_the_take_script_parks_is_started_when_rq_reads_it_as_a_row(env, submit, fake_embedder, monkeypatch):
    # RQ's own enqueue writes a row without csvembed's failure callback: its raw fields are not exactly what
    # csvembed enqueues, so the take script leaves it to the worker, which judges it as a Job.
    path = write_csv(env.dir / "p.csv", "id,text\na,first row\n")
    result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    queue = Queue(FAKE_QUEUE, connection=env.connection, serializer=SERIALIZER)
    plain = queue.enqueue(RowTask.FUNC, result.id, 2, "b", "second row", ["b", "second row"], result_ttl=0)
    assert env.connection.hget(plain.key, "failure_callback_name") == b""
    parked: list[list[str]] = []
    start_parked = BatchWorker._start_parked
    monkeypatch.setattr(BatchWorker, "_start_parked", lambda worker, queue, ids, *rest: (
        parked.append(ids), start_parked(worker, queue, ids, *rest))[1])
    worker_for(env, fake_embedder, batch_size=8).work(burst=True, logging_level="WARNING")
    assert parked == [[plain.id]]
    assert sorted(row_id for _, row_id, *_ in stored_rows(env)) == ["a", "b"]
    assert (env.connection.keys("rq:job:*"), env.connection.keys("rq:execution*"), started(env)) == ([], [], {})
    assert env.connection.llen(queue.intermediate_queue_key) == 0
