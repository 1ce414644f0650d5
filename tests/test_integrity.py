"""No row lost, none stored twice or in an older version, nothing left after `delete` (issue #9)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from rq import Queue

from conftest import FAKE_QUEUE, run_cli, store_counts, wait_until, write_csv
from csvembed.delete import delete_submission
from csvembed.enqueue import RowEnqueuer
from csvembed.errors import InputError, UnknownSubmission
from csvembed.jobs import SERIALIZER, RowTask
from csvembed.producer import Producer, SubmitOptions
from csvembed.reader import Source
from csvembed.retry import retry_failed
from csvembed.store import open_store
from csvembed.submissions import SubmissionRecords, record_key
from csvembed.windows import Shape
from doubles import HookedEmbedder

# PostgreSQL costs a server start: its variants belong to the slow tier.
BOTH_STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)]


def all_rows(env) -> list[tuple[str, str, str, str]]:
    """(collection, id, submission, text) of every row in the store, read exactly with SQL."""
    store = open_store(env.db)
    try:
        if store.dimension is None:
            return []
        table = "csvembed_rows" if env.db.startswith("postgresql://") else "rows"
        return sorted(store.connection.execute(f"SELECT collection, id, submission, text FROM {table}"))
    finally:
        store.close()


def store_rows(env) -> dict[str, tuple[str, str]]:
    """id -> (submission, text) of every stored row."""
    return {row_id: (submission, text) for _, row_id, submission, text in all_rows(env)}


def traces(env, submission_id: str) -> list[str]:
    """Every Redis key that names the submission, and every list, set or sorted-set member that does."""
    found = [key.decode() for key in env.connection.scan_iter(match=f"*{submission_id}*")]
    for key in env.connection.scan_iter(match="rq:*"):
        kind = env.connection.type(key).decode()
        members = {"list": lambda: env.connection.lrange(key, 0, -1), "set": lambda: env.connection.smembers(key),
                   "zset": lambda: env.connection.zrange(key, 0, -1)}.get(kind, lambda: [])()
        found += [f"{key.decode()} holds {m.decode()}" for m in members if submission_id.encode() in m]
    return sorted(found)


def queued_per_row_id(env, queue: str = FAKE_QUEUE) -> Counter:
    """How many queued jobs each row id has, across submissions."""
    from rq.job import Job

    ids = [raw.decode() for raw in env.connection.lrange(Queue(queue, connection=env.connection).key, 0, -1)]
    jobs = Job.fetch_many(ids, connection=env.connection, serializer=SERIALIZER)
    return Counter(RowTask.from_job(job).row_id for job in jobs)


# --- 1. the later row of a file wins, across submissions too ---------------------------------------


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
@pytest.mark.parametrize("first", ["first", "the first and much longer version of this row"])
@pytest.mark.parametrize("batch_size", [64, 1])
def test_resubmitting_a_file_with_a_repeated_id_keeps_its_later_row(env, submit, drain, fake_embedder, first,
                                                                     batch_size):
    # "first" is shorter than "second" and the long variant is longer: the length sort then hands
    # workers the early row before the late one, or the late one first.
    path = write_csv(env.dir / "rep.csv", f"id,text\nX,{first}\nY,y\nZ,z\nX,second\n")
    for attempt in range(2):
        result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
        assert (result.total, result.enqueued, result.skipped) == ((4, 4, 0) if attempt == 0 else (4, 2, 2))
        drain(batch_size=batch_size, model=fake_embedder)
        rows = store_rows(env)
        assert {row_id: text for row_id, (_, text) in rows.items()} == {"X": "second", "Y": "y", "Z": "z"}
        assert rows["X"][0] == result.id
        assert SubmissionRecords(env.connection).snapshot(result.id).state == "done"


def test_an_id_repeated_in_another_read_chunk_keeps_its_later_row(env, submit, drain, fake_embedder):
    middle = "".join(f"r{i},row {i}\n" for i in range(2, 5_002))  # X's two rows lie in different chunks
    path = write_csv(env.dir / "far.csv", f"id,text\nX,first\n{middle}X,second\n")
    for attempt in range(2):
        result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
        assert (result.total, result.enqueued) == ((5_002, 5_002) if attempt == 0 else (5_002, 2))
        drain(batch_size=256, model=fake_embedder)
        assert store_rows(env)["X"] == (result.id, "second")
    assert store_counts(env) == (5_001, 5_001)


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_a_row_of_an_older_submission_never_replaces_a_newer_one(env, submit, drain, fake_embedder):
    # Two submissions of X queued one after the other on two queues; a worker takes the newer
    # submission's queue first, then the older one's. The newer version must stay.
    path = write_csv(env.dir / "v.csv", "id,text\nX,old version\n")
    older = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",), queue="old")
    write_csv(path, "id,text\nX,new version\n")
    newer = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",), queue="new")
    drain(model=fake_embedder, queues=(newer.queue,))
    drain(model=fake_embedder, queues=(older.queue,))
    assert store_rows(env) == {"X": (newer.id, "new version")}
    records = SubmissionRecords(env.connection)
    assert (records.snapshot(older.id).state, records.snapshot(newer.id).state) == ("done", "done")
    # And the newest of three wins over both.
    write_csv(path, "id,text\nX,newest\n")
    newest = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    drain(model=fake_embedder)
    assert store_rows(env) == {"X": (newest.id, "newest")}


def test_a_later_row_equal_to_the_store_still_replaces_an_earlier_one(env, submit, drain, fake_embedder):
    path = write_csv(env.dir / "eq.csv", "id,text\nX,old\n")
    submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    drain(model=fake_embedder)
    write_csv(path, "id,text\nX,new\nX,old\n")  # the later row is what the store already holds
    result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    assert (result.enqueued, result.skipped) == (2, 0)
    drain(batch_size=1, model=fake_embedder)
    assert store_rows(env) == {"X": (result.id, "old")}


# --- 2. delete while a worker holds rows; a submit rejected while a worker runs --------------------


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
@pytest.mark.parametrize(("at", "expected"), [(1, (0, 200)), (2, (63, 137))])
def test_delete_while_a_worker_holds_rows_leaves_nothing(env, submit, drain, fake_embedder, at, expected):
    # Row 1's empty text sorts it into the first batch, where it fails alone.
    rows = "".join(f"{i},{'' if i == 1 else f'text {i}'}\n" for i in range(1, 201))
    path = write_csv(env.dir / "held.csv", "id,text\n" + rows)
    result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    deleted = []

    def delete_now(_worker) -> None:  # the worker holds a batch, inside the model (after storing one batch at 2)
        if at == 2:  # the first batch is stored on the store's thread while this one is embedded
            wait_until(lambda: SubmissionRecords(env.connection).snapshot(result.id).done == 63, "batch 1 stored")
        store = open_store(env.db)
        deleted.append(delete_submission(env.connection, store, result.id))
        store.close()

    drain(batch_size=64, model=HookedEmbedder(fake_embedder, at=at, hook=delete_now))
    assert (deleted[0].rows, deleted[0].jobs) == expected  # rows stored; jobs queued, held or failed
    assert store_counts(env) == (0, 0)
    assert traces(env, result.id) == []
    records = SubmissionRecords(env.connection)
    assert (records.exists(result.id), records.snapshot(result.id)) == (False, None)
    with pytest.raises(UnknownSubmission):
        retry_failed(env.connection, result.id)
    with pytest.raises(UnknownSubmission):
        delete_submission(env.connection, None, result.id)


class DeletesBeforeItsFirstWrite:
    """The real store; its first write deletes the submission first: a delete while a batch's write is under way
    (on the worker's store thread, while the next batch is embedded when the model runs on a device)."""

    def __init__(self, env, store, submission_id: str) -> None:
        self.env, self.store, self.submission_id = env, store, submission_id
        self.deleted: list = []

    def write(self, rows, vectors) -> None:
        if not self.deleted:
            other = open_store(self.env.db)
            self.deleted.append(delete_submission(self.env.connection, other, self.submission_id))
            other.close()
        self.store.write(rows, vectors)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_delete_while_a_batch_is_written_leaves_nothing(env, submit, drain, fake_embedder, device):
    path = write_csv(env.dir / "held.csv", "id,text\n" + "".join(f"{i},text {i}\n" for i in range(1, 201)))
    result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    fake_embedder.device = device  # on a device, batch 2 is taken and embedded while batch 1 is written
    store = DeletesBeforeItsFirstWrite(env, open_store(env.db), result.id)
    drain(batch_size=64, model=fake_embedder, store=store)
    assert (store.deleted[0].rows, store.deleted[0].jobs) == (0, 200)  # nothing stored yet; every job purged
    assert store_counts(env) == (0, 0)
    assert traces(env, result.id) == []
    assert SubmissionRecords(env.connection).exists(result.id) is False


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_a_submit_rejected_while_a_worker_runs_leaves_nothing(env, drain, fake_embedder):
    read_end, write_end = os.pipe()
    go = threading.Event()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as out:
            # pandas reads 256 KiB blocks: enough rows that it parses (and submit enqueues) some chunks
            out.write(b"id,text\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(1, 40_001)))
            go.wait(30)
            out.write(b"40001,ragged,row\n")

    raised: list[BaseException] = []

    def run_submit() -> None:
        source = Source("pipe.csv", os.fdopen(read_end, "rb"), is_stdin=False)
        try:
            Producer(env.connection, env.db, fake_embedder.name).submit(source, SubmitOptions(id_column="id"))
        except BaseException as exc:
            raised.append(exc)

    threads = [threading.Thread(target=feed), threading.Thread(target=run_submit)]
    for thread in threads:
        thread.start()
    queue = Queue("csvembed", connection=env.connection)
    deadline = time.monotonic() + 30
    while queue.count < 5_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    (submission_id,) = SubmissionRecords(env.connection).recent(1)

    def reject_now(_worker) -> None:  # one batch stored, the next held: now the ragged row arrives
        go.set()
        threads[1].join(30)

    drain(batch_size=64, model=HookedEmbedder(fake_embedder, at=2, hook=reject_now))
    threads[0].join(30)
    assert [type(exc) for exc in raised] == [InputError]
    assert "Expected 2 fields in line 40002, saw 3" in str(raised[0])
    assert store_counts(env) == (0, 0)
    assert traces(env, submission_id) == []


def test_writes_for_a_deleted_submission_never_recreate_its_record(env, submit, fake_embedder):
    path = write_csv(env.dir / "w.csv", "id,text\n1,a\n")
    result = submit(path, model=fake_embedder.name, id_column="id")
    delete_submission(env.connection, None, result.id)
    records = SubmissionRecords(env.connection)
    with env.connection.pipeline() as pipe:
        records.mark_started(pipe, result.id)
        records.mark_done(pipe, result.id, [(1, Shape(1, False))])
        records.mark_failed(pipe, result.id, 1, "1", "late")
        records.add_rows(result.id, 5, 0, 5, pipe)
        pipe.execute()
    assert (records.renew_lease(result.id), records.clear_failure(result.id, 1)) == (False, False)
    assert traces(env, result.id) == []


# --- 3 and 4. a submit killed outright --------------------------------------------------------------


def _half_submitted(env, path: Path, numbers: list[int], empty: int | None = None) -> str:
    """What a submit killed part-way leaves: a record without lease, and the rows `numbers` queued.

    A length-sorted window is enqueued in parts, so those may go beyond the total counted so far.
    """
    records = SubmissionRecords(env.connection)
    submission_id = "deadbeef00"
    records.create(submission_id, collection=path.stem, file=str(path), queue=FAKE_QUEUE, model="test-hash-embedder",
                   columns=["id", "text"], text="text")
    tasks = [RowTask(submission_id, n, str(n), "" if n == empty else f"row {n}", [str(n), f"row {n}"])
             for n in numbers]
    with env.connection.pipeline() as pipe:
        records.add_rows(submission_id, len(tasks), 0, max(numbers), pipe)
        RowEnqueuer(Queue(FAKE_QUEUE, connection=env.connection, serializer=SERIALIZER)).enqueue(
            tasks, pipe, record_key(submission_id))
        pipe.execute()
    env.connection.delete(f"csvembed:sub:{submission_id}:lease")  # as if its 15 s had passed
    return submission_id


def test_a_resubmit_withdraws_the_rows_an_interrupted_submit_left_queued(env, submit, drain, fake_embedder):
    path = write_csv(env.dir / "killed.csv", "id,text\n" + "".join(f"{i},row {i}\n" for i in range(1, 51)))
    dead = _half_submitted(env, path, list(range(20, 0, -1)))
    records = SubmissionRecords(env.connection)
    snapshot = records.snapshot(dead)
    assert (snapshot.state, snapshot.finished, snapshot.total, snapshot.pending) == ("interrupted", True, 20, 20)

    again = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    assert queued_per_row_id(env) == Counter({str(i): 1 for i in range(1, 51)})
    assert records.snapshot(dead).state == "interrupted"
    assert not records.renew_lease(dead)  # a revived submit cannot enqueue any more
    drain(model=fake_embedder)
    assert records.snapshot(again.id).state == "done"
    assert len(store_rows(env)) == 50
    delete_submission(env.connection, None, dead)
    assert traces(env, dead) == []


def test_delete_finds_failed_jobs_beyond_the_counted_total(env, drain, fake_embedder):
    dead = _half_submitted(env, env.dir / "window.csv", list(range(31, 51)), empty=45)
    drain(model=fake_embedder)
    snapshot = SubmissionRecords(env.connection).snapshot(dead)
    assert (snapshot.total, snapshot.done, snapshot.failed) == (20, 19, 1)
    assert env.connection.exists("rq:job:deadbeef00-45", "rq:results:deadbeef00-45") == 2
    store = open_store(env.db)
    assert delete_submission(env.connection, store, dead).rows == 19
    store.close()
    assert traces(env, dead) == []


@pytest.mark.slow
def test_a_submit_killed_mid_file_reads_interrupted_and_is_not_queued_twice(env, submit):
    rows = 20_000
    path = write_csv(env.dir / "big.csv", "id,text\n" + "".join(f"{i},row number {i}\n" for i in range(1, rows + 1)))
    process = subprocess.Popen([sys.executable, "-m", "csvembed", "submit", str(path), "--id-column", "id",
                                "--max-pending", "300"], env=env.environ, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    queue = Queue("csvembed", connection=env.connection)
    deadline = time.monotonic() + 60
    while queue.count < 300 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # it now waits for room in the queue
    process.send_signal(signal.SIGKILL)
    process.wait()
    records = SubmissionRecords(env.connection)
    (dead,) = records.recent(1)
    assert records.snapshot(dead).state == "submitting"  # the lease still runs
    started = time.monotonic()
    while records.snapshot(dead).state != "interrupted":
        assert time.monotonic() - started < 30
        time.sleep(0.5)

    status = run_cli(env, "status", dead, "--json")
    assert (status.returncode, json.loads(status.stdout)["state"]) == (0, "interrupted")
    waited = run_cli(env, "status", dead, "--wait", timeout=60)
    assert waited.returncode == 1, waited.stderr

    again = submit(path, id_column="id")
    assert queued_per_row_id(env, "csvembed") == Counter({str(i): 1 for i in range(1, rows + 1)})
    assert (again.total, again.enqueued) == (rows, rows)
    deleted = run_cli(env, "delete", dead, "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert traces(env, dead) == []
    assert run_cli(env, "status", dead).returncode == 2


# --- 5. standard input -------------------------------------------------------------------------------


def test_two_files_on_stdin_get_collections_of_their_own(env, drain, fake_embedder):
    producer = Producer(env.connection, env.db, fake_embedder.name)
    results = [producer.submit(Source("<stdin>", io.BytesIO(data), is_stdin=True), SubmitOptions())
               for data in (b"text\nfrom the first\n", b"text\nfrom the second\n")]
    assert [r.collection for r in results] == [f"stdin-{r.id}" for r in results]
    named = producer.submit(Source("<stdin>", io.BytesIO(b"text\nnamed\n"), is_stdin=True),
                            SubmitOptions(collection="mine"))
    assert named.collection == "mine"
    drain(model=fake_embedder)
    texts = {collection: text for collection, _, _, text in all_rows(env)}
    assert texts == {results[0].collection: "text: from the first", results[1].collection: "text: from the second",
                     "mine": "text: named"}


def test_a_store_made_before_submissions_were_ordered_gains_the_column(env, submit, drain, fake_embedder):
    path = write_csv(env.dir / "old.csv", "id,text\nX,kept\n")
    submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    drain(model=fake_embedder)
    store = open_store(env.db)
    store.connection.execute("ALTER TABLE rows DROP COLUMN submitted_at")  # as an older csvembed left it
    store.close()
    write_csv(path, "id,text\nX,replaced\n")
    result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    drain(model=fake_embedder)
    assert store_rows(env) == {"X": (result.id, "replaced")}
