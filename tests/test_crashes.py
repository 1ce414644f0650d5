"""Nothing lost: real worker processes killed, real Redis restarted, and every row stored exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import redis
from rq.registry import StartedJobRegistry

from conftest import STORES, start_redis, stored_rows, wait_for, write_csv
from csvembed.store import open_store
from csvembed.submissions import SubmissionRecords

pytestmark = pytest.mark.slow  # worker processes with the real model


def rows_csv(path, count: int, words: int = 40) -> None:
    """Rows long enough that a batch takes a few seconds to embed on 2 cores."""
    body = " ".join(f"word{i}" for i in range(words))
    write_csv(path, "id,text\n" + "".join(f"r{i},row {i}: {body}\n" for i in range(1, count + 1)))


def submitted_rows(env, submit, count: int):
    """Submit `count` rows; returns the result, the submission records and the started registry."""
    path = env.dir / "rows.csv"
    rows_csv(path, count)
    result = submit(path, id_column="id", text_columns=("text",))
    return result, SubmissionRecords(env.connection), StartedJobRegistry("csvembed", connection=env.connection)


def start_worker(env, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "csvembed", "worker", *args], env=env.environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)



def assert_stored_exactly_once(env, count: int) -> None:
    store = open_store(env.db)
    try:
        assert store.counts() == (count, count)
        if not env.db.startswith("postgresql://"):
            assert store.connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        store.close()
    ids = [row_id for _, row_id, *_ in stored_rows(env)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(1, count + 1))


@pytest.mark.parametrize("env", STORES, indirect=True)
def test_a_worker_killed_mid_batch_loses_nothing(env, submit):
    result, records, started = submitted_rows(env, submit, 300)
    victim = start_worker(env, "--batch-size", "100")
    # Kill it while it holds a batch, after it already stored one.
    wait_for(lambda: records.snapshot(result.id).done >= 100 and started.count > 0, 120, "a batch in flight")
    held = started.count
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    assert 0 < held <= 100 and records.snapshot(result.id).done < 300

    survivor = start_worker(env, "--batch-size", "100")
    try:
        wait_for(lambda: env.connection.keys("rq:worker:*"), 60, "the second worker to load its model")
        loaded_after = time.monotonic() - killed_at
        snapshot = wait_for(lambda: (s := records.snapshot(result.id)).state == "done" and s, 120, "all rows done")
        recovered_in = time.monotonic() - killed_at
    finally:
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(60) == 0
    # 30 s to notice and requeue, plus loading the model and embedding at most 200 rows.
    assert recovered_in < 30 + loaded_after + 15, (recovered_in, loaded_after)
    assert (snapshot.done, snapshot.failed, snapshot.total) == (300, 0, 300)
    assert_stored_exactly_once(env, 300)


def test_sigterm_finishes_the_batch_and_exits_0(env, submit):
    result, records, started = submitted_rows(env, submit, 300)
    worker = start_worker(env, "--batch-size", "50")
    wait_for(lambda: started.count > 0, 120, "a batch in flight", poll=0.01)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, worker.stderr.read().decode()
    snapshot = records.snapshot(result.id)
    assert snapshot.done % 50 == 0 and 50 <= snapshot.done < 300  # whole batches, the held one finished
    assert (snapshot.failed, snapshot.pending) == (0, 300 - snapshot.done)
    assert started.count == 0
    assert env.connection.llen("rq:queue:csvembed") == 300 - snapshot.done
    assert env.connection.llen("rq:queue:csvembed:intermediate") == 0


def test_rows_survive_redis_restarts_before_and_during_the_run(env, tmp_path):
    directory = tmp_path / "own-redis"
    directory.mkdir()
    server, url = start_redis(directory, "--appendonly", "yes", "--appendfsync", "always")
    env.redis_url, env.connection = url, redis.Redis.from_url(url)
    path = tmp_path / "restart.csv"
    rows_csv(path, 240)
    submitted = subprocess.run([sys.executable, "-m", "csvembed", "submit", str(path), "--id-column", "id",
                                "--text-column", "text"], env=env.environ, capture_output=True, check=True)
    submission_id = submitted.stdout.decode().strip()

    server.terminate()  # a restart between submit and worker
    server.wait(10)
    server, _ = start_redis(directory, "--appendonly", "yes", "--appendfsync", "always")
    connection = env.connection
    assert connection.llen("rq:queue:csvembed") == 240

    worker = start_worker(env, "--batch-size", "40")
    records = SubmissionRecords(connection)
    try:
        wait_for(lambda: records.snapshot(submission_id).done >= 40, 120, "the first rows")
        server.terminate()  # and a restart mid-run
        server.wait(10)
        time.sleep(2)
        server, _ = start_redis(directory, "--appendonly", "yes", "--appendfsync", "always")
        records = SubmissionRecords(env.connection)
        snapshot = wait_for(lambda: (s := records.snapshot(submission_id)).state == "done" and s, 120, "all rows")
        assert worker.poll() is None  # it waited for Redis instead of dying
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        server.terminate()
        server.wait(10)
    server, _ = start_redis(directory, "--appendonly", "yes", "--appendfsync", "always")
    try:
        assert_stored_exactly_once(env, 240)
    finally:
        server.terminate()
        server.wait(10)
    assert (snapshot.done, snapshot.failed, snapshot.total) == (240, 0, 240)
    assert b"waiting for Redis at" in worker.stderr.read()
