"""The batching worker keeps every per-row guarantee: bad rows fail alone, heartbeats, retries."""

from __future__ import annotations

import threading
import time

import pytest
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from conftest import stored_rows, write_csv
from csvembed import defaults
from csvembed.jobs import SERIALIZER
from csvembed.submissions import SubmissionRecords


class PoisonTextEmbedderDouble:
    """Test double: wraps the real model but raises on any batch containing a poisoned text."""

    def __init__(self, real, poison: str) -> None:
        self.real, self.poison = real, poison
        self.name, self.dimension, self.device = real.name, real.dimension, real.device
        # How it splits long text into windows is the real one's.
        self.max_seq_length, self.window_tokens, self.text_cap = real.max_seq_length, real.window_tokens, real.text_cap
        self.token_counts, self.token_spans = real.token_counts, real.token_spans
        self.calls: list[int] = []

    def encode(self, texts):
        self.calls.append(len(texts))
        if self.poison in texts:
            raise ValueError("poisoned input")
        return self.real.encode(texts)


class SlowEmbedderDouble:
    """Test double: the real model, but each call takes `seconds` longer; counts the texts it saw."""

    def __init__(self, real, seconds: float) -> None:
        self.real, self.seconds = real, seconds
        self.name, self.dimension, self.device = real.name, real.dimension, real.device
        # How it splits long text into windows is the real one's.
        self.max_seq_length, self.window_tokens, self.text_cap = real.max_seq_length, real.window_tokens, real.text_cap
        self.token_counts, self.token_spans = real.token_counts, real.token_spans
        self.texts_seen: list[str] = []

    def encode(self, texts):
        self.texts_seen.extend(texts)
        time.sleep(self.seconds)
        return self.real.encode(texts)


def stored_ids(env) -> list[str]:
    return sorted(row_id for _, row_id, *_ in stored_rows(env))


@pytest.mark.slow  # the real model
def test_an_empty_row_fails_alone_with_its_reason(env, submit, drain):
    path = write_csv(env.dir / "p.csv", "id,text\na,first row\nb,   \nc,third row\n")
    result = submit(path, id_column="id", text_columns=("text",))
    drain(batch_size=64)
    assert stored_ids(env) == ["a", "c"]
    records = SubmissionRecords(env.connection)
    snapshot = records.snapshot(result.id)
    assert (snapshot.state, snapshot.done, snapshot.failed, snapshot.pending) == ("partial", 2, 1, 0)
    assert records.failures(result.id) == [{"row_number": 2, "id": "b", "reason": "empty text: nothing to embed",
                                            "permanent": True}]
    # A row that cannot succeed is not retried: it is failed at once, and RQ keeps its job for a bounded time.
    failed = FailedJobRegistry("csvembed", connection=env.connection, serializer=SERIALIZER)
    assert failed.get_job_ids() == [f"{result.id}-2"]
    assert 0 < env.connection.ttl(f"rq:job:{result.id}-2") <= defaults.FAILURE_TTL


@pytest.mark.slow  # the real model
def test_a_row_that_breaks_the_batched_call_is_isolated(env, submit, drain, embedder):
    rows = "".join(f"{i},ordinary row {i}\n" for i in range(1, 11)) + "11,POISON\n"
    result = submit(write_csv(env.dir / "p.csv", "id,text\n" + rows), id_column="id", text_columns=("text",))
    double = PoisonTextEmbedderDouble(embedder, "POISON")
    drain(batch_size=64, model=double)
    assert stored_ids(env) == sorted(str(i) for i in range(1, 11))
    assert double.calls[0] == 11 and double.calls[1:] == [1] * 11  # one batch, then one by one
    failures = SubmissionRecords(env.connection).failures(result.id)
    assert failures == [{"row_number": 11, "id": "11", "permanent": True,
                         "reason": "the model failed on this row: ValueError: poisoned input"}]


@pytest.mark.slow  # the real model
def test_a_batch_that_outlives_the_heartbeat_ttl_is_not_abandoned(env, submit, drain, embedder, monkeypatch):
    monkeypatch.setattr(defaults, "HEARTBEAT_TTL", 2)
    monkeypatch.setattr(defaults, "HEARTBEAT_INTERVAL", 0.5)
    result = submit(write_csv(env.dir / "s.csv", "id,text\n1,slow one\n2,slow two\n3,slow three\n"),
                    id_column="id", text_columns=("text",))
    double = SlowEmbedderDouble(embedder, seconds=5)
    registry = StartedJobRegistry("csvembed", connection=env.connection, serializer=SERIALIZER)
    reaped_while_running = []

    def reap_like_another_worker():
        # What any other worker (or status) does: clean up expired started jobs, many times over,
        # from the moment the batch is in flight until well past its heartbeat TTL.
        while registry.count < 3:
            time.sleep(0.05)
        for _ in range(15):
            registry.cleanup()
            reaped_while_running.append(Queue("csvembed", connection=env.connection).count)
            time.sleep(0.3)

    reaper = threading.Thread(target=reap_like_another_worker)
    reaper.start()
    drain(batch_size=64, model=double)
    reaper.join()
    assert sorted(double.texts_seen) == ["slow one", "slow three", "slow two"]  # each embedded once
    assert set(reaped_while_running) == {0}  # nothing was ever put back in the queue
    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.done, snapshot.failed, snapshot.state) == (3, 0, "done")


@pytest.mark.slow  # the real model
def test_finished_rows_leave_almost_nothing_in_redis(env, submit, drain):
    rows = "".join(f"{i},row {i}\n" for i in range(1, 201))
    result = submit(write_csv(env.dir / "m.csv", "id,text\n" + rows), id_column="id", text_columns=("text",))
    assert env.connection.exists(f"rq:job:{result.id}-1") == 1
    drain(batch_size=64)
    job_keys = list(env.connection.scan_iter("rq:job:*"))
    result_keys = list(env.connection.scan_iter("rq:results:*"))
    execution_keys = list(env.connection.scan_iter("rq:execution:*"))
    assert (job_keys, result_keys, execution_keys) == ([], [], [])
    assert StartedJobRegistry("csvembed", connection=env.connection).count == 0
    assert env.connection.llen("rq:queue:csvembed:intermediate") == 0


@pytest.mark.parametrize("max_pending", [5, 50])
def test_max_pending_holds_the_queue_under_its_bound(env, submit, max_pending):
    rows = "".join(f"{i},row {i}\n" for i in range(1, 301))
    path = write_csv(env.dir / "q.csv", "id,text\n" + rows)
    queue = Queue("csvembed", connection=env.connection, serializer=SERIALIZER)
    seen, taken = [], 0
    producer = threading.Thread(target=submit, args=(path,), kwargs={"max_pending": max_pending})
    producer.start()
    while producer.is_alive() or queue.count:
        seen.append(queue.count)
        taken += len(env.connection.lpop(queue.key, 3) or [])  # a slow consumer
        time.sleep(0.01)
    producer.join()
    assert taken == 300
    assert max(seen) <= max_pending
    assert max(seen) >= max_pending - 3  # it did fill up to the bound
