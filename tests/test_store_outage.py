"""An unreachable store is not the rows' fault: the worker keeps its batch and waits, spending no retry.

Fast tier: the real BatchWorker and SQLite store, with a store double whose first writes fail the way an
unreachable store fails. The outages of a real PostgreSQL are in test_outages.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections import Counter

import apsw
import pytest
from rq.registry import StartedJobRegistry

from conftest import FAKE_QUEUE, store_counts, wait_until, write_csv
from csvembed import defaults, embedder
from csvembed.errors import ServiceUnavailable
from csvembed.ingest import Ingestor
from csvembed.monitor import Monitor
from csvembed.outage import unreachable_reason
from csvembed.store import open_store
from csvembed.submissions import SubmissionRecords
from csvembed.worker import BatchWorker, run_worker


class FailingWritesDouble:
    """Test double: the real store, whose first `failures` writes raise `error` (built anew each time),
    as a store that is down or a transient fault would; `calls` counts the tries."""

    def __init__(self, store, failures: int, error) -> None:
        self.store, self.failures, self.error, self.calls = store, failures, error, 0

    def write(self, rows, vectors) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        self.store.write(rows, vectors)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture
def quick_backoff(monkeypatch):
    monkeypatch.setattr(defaults, "STORE_RETRY_BASE", 0.05)
    monkeypatch.setattr(defaults, "STORE_RETRY_CAP", 0.2)


def rows(env, submit, count: int):
    path = write_csv(env.dir / "rows.csv", "id,text\n" + "".join(f"r{i},row number {i}\n" for i in range(count)))
    return submit(path, "test-hash-embedder", id_column="id", text_columns=("text",))


def test_a_locked_store_is_waited_out_without_spending_retries(env, submit, drain, fake_embedder, quick_backoff,
                                                               caplog):
    result = rows(env, submit, 40)
    store = FailingWritesDouble(open_store(env.db), 3, lambda: apsw.BusyError("database is locked"))
    with caplog.at_level(logging.INFO, logger="csvembed"):
        worker = drain(batch_size=40, model=fake_embedder, store=store)
    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.done, snapshot.failed, store.calls) == (40, 0, 4)
    assert store_counts(env) == (40, 40)
    assert len(fake_embedder.calls) == 1  # embedded once: only the write was tried again
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("store unavailable")]
    assert waits == ["store unavailable: database is locked; waiting"]  # one line per outage
    assert env.connection.hmget(worker.key, "retries", "rows_failed", "waiting_for") == [None, None, None]


def test_a_transient_failure_counts_retries_not_failures(env, submit, drain, fake_embedder):
    result = rows(env, submit, 30)
    store = FailingWritesDouble(open_store(env.db), 1, lambda: RuntimeError("a transient fault"))
    worker = drain(batch_size=30, model=fake_embedder, store=store)
    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.done, snapshot.failed) == (30, 0)
    # RQ's own counter says 30 failures; the rows failed for good are none, and 30 attempts were retried.
    assert env.connection.hmget(worker.key, "failed_job_count", "rows_failed", "retries") == [b"30", b"0", b"30"]


def test_a_stop_while_waiting_puts_the_rows_back_untried(env, submit, fake_embedder, quick_backoff):
    result = rows(env, submit, 20)
    store = FailingWritesDouble(open_store(env.db), 10**6, lambda: apsw.BusyError("database is locked"))
    worker = BatchWorker([FAKE_QUEUE], ingestor=Ingestor(fake_embedder, store, SubmissionRecords(env.connection)),
                         batch_size=20)

    readings: list = []

    def stop_once_waiting(rows, vectors) -> None:  # the second try: the worker has waited once
        if store.calls == 1:
            assert env.connection.hget(worker.key, "waiting_for") == b"store"  # shown while waiting
            readings.append(Monitor(env.connection).read([result.id]).queues[FAKE_QUEUE])
            # SIGTERM: the write runs on the worker's store thread, and the handler on the main thread.
            os.kill(os.getpid(), signal.SIGTERM)
        FailingWritesDouble.write(store, rows, vectors)

    store.write = stop_once_waiting
    started = time.monotonic()
    worker.work(burst=True, logging_level="WARNING")
    assert time.monotonic() - started < 2
    assert (readings[0].workers, readings[0].waiting_for_store) == (1, 1)
    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.done, snapshot.failed, snapshot.pending) == (0, 0, 20)
    assert env.connection.llen(f"rq:queue:{FAKE_QUEUE}") == 20  # all back, in their order, retries untouched
    assert env.connection.lindex(f"rq:queue:{FAKE_QUEUE}", 0) == f"{result.id}-1".encode()
    assert {env.connection.hget(f"rq:job:{result.id}-{i}", "retries_left") for i in range(1, 21)} == {
        str(defaults.MAX_RETRIES).encode()}
    assert StartedJobRegistry(FAKE_QUEUE, connection=env.connection).count == 0


def test_a_lapsed_heartbeat_reads_lost_and_is_not_counted_live(env, submit, fake_embedder):
    result = rows(env, submit, 1)
    worker = BatchWorker([FAKE_QUEUE], ingestor=Ingestor(fake_embedder, open_store(env.db),
                                                          SubmissionRecords(env.connection)), batch_size=8)
    worker.register_birth()
    worker.set_state("idle")
    worker.heartbeat()
    monitor = Monitor(env.connection)
    assert [info.state for info in monitor.workers()] == ["idle"]
    assert monitor.read([result.id]).queues[FAKE_QUEUE].workers == 1
    env.connection.hset(worker.key, "last_heartbeat", "2020-01-01T00:00:00.000000Z")  # as if killed long ago
    assert [info.state for info in monitor.workers()] == ["lost"]
    assert monitor.read([result.id]).queues[FAKE_QUEUE].workers == 0


def test_only_outages_are_waited_out():
    import psycopg

    assert unreachable_reason(apsw.BusyError("database is locked")) == "database is locked"
    assert unreachable_reason(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert unreachable_reason(psycopg.errors.AdminShutdown("terminating connection"))
    assert unreachable_reason(psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum")) is None
    assert unreachable_reason(psycopg.errors.DataException("bad value")) is None
    assert unreachable_reason(RuntimeError("x")) is None
    try:
        try:
            raise psycopg.OperationalError("connection refused")
        except psycopg.Error:
            raise ServiceUnavailable("cannot use the store postgresql://u:***@h/db: connection refused") from None
    except ServiceUnavailable as wrapped:
        assert unreachable_reason(wrapped) == "cannot use the store postgresql://u:***@h/db: connection refused"
    assert unreachable_reason(ServiceUnavailable("x is not a csvembed database")) is None


def test_a_failed_write_is_logged_with_its_secrets_masked(env, submit, drain, fake_embedder, caplog):
    result = rows(env, submit, 3)
    fault = "cannot reach postgresql://worker:hunter2@db.internal/emb"
    store = FailingWritesDouble(open_store(env.db), 1, lambda: RuntimeError(fault))
    with caplog.at_level(logging.WARNING, logger="csvembed"):
        drain(batch_size=3, model=fake_embedder, store=store)
    assert SubmissionRecords(env.connection).snapshot(result.id).done == 3
    assert "hunter2" not in caplog.text
    assert "storing a batch of 3 rows failed: cannot reach postgresql://worker:***@db.internal/emb" in caplog.text


# A model on the CPU stores each batch before embedding the next; one on a device (`device` set on the double)
# stores a batch while the next is embedded (BatchWorker._overlap_store). Both must keep every promise.
DEVICES = ["cpu", "cuda"]


@pytest.mark.parametrize("device", DEVICES)
def test_a_stop_while_waiting_gives_back_every_batch_held_in_their_order(env, submit, fake_embedder, quick_backoff,
                                                                          device, caplog):
    # On a device, the batch whose write waits, the next one (embedded meanwhile) and the one taken ahead all go
    # back; on the CPU, the batch whose write waits. Each to the front of the queue, the later ones first.
    result = rows(env, submit, 40)
    fake_embedder.device = device
    queued = env.connection.lrange(f"rq:queue:{FAKE_QUEUE}", 0, -1)
    store = FailingWritesDouble(open_store(env.db), 10**6, lambda: apsw.BusyError("database is locked"))
    worker = BatchWorker([FAKE_QUEUE], ingestor=Ingestor(fake_embedder, store, SubmissionRecords(env.connection)),
                         batch_size=10)
    held, embedded = (30, 2) if device != "cpu" else (10, 1)

    def stop_once_waiting(rows, vectors) -> None:
        if store.calls == 1:  # the second try of the first write
            registry = StartedJobRegistry(FAKE_QUEUE, connection=env.connection)
            wait_until(lambda: registry.count == held, f"{held} rows held")
            os.kill(os.getpid(), signal.SIGTERM)
        FailingWritesDouble.write(store, rows, vectors)

    store.write = stop_once_waiting
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="csvembed"):
        worker.work(burst=True, logging_level="WARNING")
    assert time.monotonic() - started < 3
    assert len(fake_embedder.calls) == embedded
    said = [r.getMessage() for r in caplog.records if "queued again" in r.getMessage()]
    assert said == (["stopping: 10 rows taken ahead queued again"] if device != "cpu" else []) + [
        f"stopped while the store was unreachable: {embedded * 10} rows queued again"]  # each embedded batch
    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.done, snapshot.failed, snapshot.pending) == (0, 0, 40)
    assert env.connection.lrange(f"rq:queue:{FAKE_QUEUE}", 0, -1) == queued  # all back, in their order
    assert {env.connection.hget(f"rq:job:{result.id}-{i}", "retries_left") for i in range(1, 41)} == {
        str(defaults.MAX_RETRIES).encode()}
    assert StartedJobRegistry(FAKE_QUEUE, connection=env.connection).count == 0
    assert env.connection.keys("rq:execution:*") == []
    assert env.connection.hmget(worker.key, "waiting_for", "retries", "rows_failed") == [None, None, None]
    assert store_counts(env) == (0, 0)


@pytest.mark.parametrize("device", DEVICES)
def test_a_failed_write_retries_its_batch_alone(env, submit, drain, fake_embedder, device):
    # On a device the first batch's write fails while the second is embedded: the failure is the first batch's.
    result = rows(env, submit, 30)
    fake_embedder.device = device
    store = FailingWritesDouble(open_store(env.db), 1, lambda: RuntimeError("a transient fault"))
    worker = drain(batch_size=10, model=fake_embedder, store=store)
    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.done, snapshot.failed, snapshot.pending) == (30, 0, 0)
    assert env.connection.hmget(worker.key, "failed_job_count", "rows_failed", "retries", "successful_job_count") == [
        b"10", b"0", b"10", b"30"]
    embedded = Counter(text for call in fake_embedder.calls for text in call)
    assert embedded == {f"row number {i}": 2 if i < 10 else 1 for i in range(30)}  # the failed batch, twice
    assert store_counts(env) == (30, 30)


def test_a_burst_worker_refuses_an_unusable_store_before_loading_its_model(env, submit, monkeypatch, tmp_path):
    """A script's `worker --burst` learns at once that its store cannot be used (exit 3), not after the model's
    load (11 s against a closed PostgreSQL port, README Guarantees)."""
    rows(env, submit, 2)
    loaded = []
    monkeypatch.setattr(embedder, "load_embedder", lambda *args, **kwargs: loaded.append(args))
    text_file = write_csv(tmp_path / "notes.txt", "not a database\n" * 200)
    settings = dataclasses.replace(env.settings, db=str(text_file), model="test-hash-embedder")
    with pytest.raises(ServiceUnavailable) as raised:
        run_worker(settings, ["csvembed"], burst=True, batch_size=8)
    assert str(raised.value) == f"cannot use the store {text_file}: file is not a database"
    assert loaded == []
    assert env.connection.llen(f"rq:queue:{FAKE_QUEUE}") == 2
