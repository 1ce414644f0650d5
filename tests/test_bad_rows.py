"""One bad row fails alone: at submit when submit can tell (an id too long for any store), else when the
store refuses it, found by splitting the batch; and `retry` fails it once more without touching the others."""

from __future__ import annotations

import hashlib

import apsw
import pytest

from conftest import store_counts, write_csv
from csvembed import defaults
from csvembed.errors import InputError
from csvembed.ingest import Ingestor
from csvembed.jobs import RowTask
from csvembed.retry import retry_failed
from csvembed.store import open_store
from csvembed.submissions import SubmissionRecords

BOTH_STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)]
# Incompressible, so PostgreSQL cannot shrink the index entry below btree's 2704 bytes.
LONG_ID = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(94))[:6000]
BAD_ROW = 37


def hundred_rows(env):
    """100 rows; row BAD_ROW has an id of 6,000 characters."""
    lines = [f"{LONG_ID if n == BAD_ROW else f'sku-{n}'},product number {n}\n" for n in range(1, 101)]
    return write_csv(env.dir / "products.csv", "id,text\n" + "".join(lines))


def counts(env, submission: str) -> tuple[int, int, int]:
    snapshot = SubmissionRecords(env.connection).snapshot(submission)
    return snapshot.done, snapshot.failed, snapshot.pending


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_an_id_too_long_for_a_store_fails_alone_at_submit(env, submit, drain, fake_embedder):
    result = submit(hundred_rows(env), model=fake_embedder.name, id_column="id", text_columns=("text",))
    assert (result.total, result.enqueued, result.skipped, result.failed) == (100, 99, 0, 1)
    assert SubmissionRecords(env.connection).failures(result.id) == [{
        "row_number": BAD_ROW, "id": LONG_ID[:80] + "…", "permanent": True,
        "reason": "id too long: 6,000 bytes (UTF-8), at most 1,000"}]
    drain(model=fake_embedder)
    assert store_counts(env) == (99, 99)
    assert counts(env, result.id) == (99, 1, 0)
    assert SubmissionRecords(env.connection).snapshot(result.id).state == "partial"


@pytest.mark.slow
@pytest.mark.parametrize("env", ["postgres"], indirect=True)
def test_a_row_the_store_refuses_fails_alone_and_retry_fails_only_it_again(env, submit, drain, fake_embedder,
                                                                            monkeypatch):
    monkeypatch.setattr(defaults, "MAX_KEY_BYTES", 10**6)  # as if submit had not checked
    result = submit(hundred_rows(env), model=fake_embedder.name, id_column="id", text_columns=("text",))
    assert (result.enqueued, result.failed) == (100, 0)
    drain(model=fake_embedder)  # two batches of 64 and 36
    assert store_counts(env) == (99, 99)
    assert counts(env, result.id) == (99, 1, 0)
    (failure,) = SubmissionRecords(env.connection).failures(result.id)
    reason = failure["reason"]
    assert (failure["row_number"], failure["permanent"]) == (BAD_ROW, True)
    assert reason.startswith("the store refused this row: index row size 60") and "\n" not in reason

    assert retry_failed(env.connection, result.id, include_permanent=True).requeued == [BAD_ROW]
    drain(model=fake_embedder)
    assert [f["reason"] for f in SubmissionRecords(env.connection).failures(result.id)] == [reason]
    assert store_counts(env) == (99, 99)
    assert counts(env, result.id) == (99, 1, 0)


@pytest.mark.slow
@pytest.mark.parametrize("env", ["postgres"], indirect=True)
def test_a_nul_that_postgresql_text_cannot_hold_fails_its_row_alone(env, submit, fake_embedder):
    result = submit(write_csv(env.dir / "p.csv", "id,text\na,first\n"), model=fake_embedder.name, id_column="id",
                    text_columns=("text",))
    tasks = [RowTask(result.id, n, f"r{n}", f"row {n}", [f"r{n}", f"row {n}"]) for n in range(1, 9)]
    tasks[2] = RowTask(result.id, 3, "r3", "a NUL \x00 in text", ["r3", "x"])
    tasks[5] = RowTask(result.id, 6, "r6", "row 6", ["r6", "a NUL \x00 in a field"])
    store = open_store(env.db)
    try:
        outcomes = Ingestor(fake_embedder, store, SubmissionRecords(env.connection)).ingest(tasks)
    finally:
        store.close()
    assert [type(outcome).__name__ for outcome in outcomes] == ["Shape"] * 2 + ["RowError"] + ["Shape"] * 2 + [
        "RowError"] + ["Shape"] * 2
    assert str(outcomes[2]) == "the store refused this row: PostgreSQL text fields cannot contain NUL (0x00) bytes"
    assert str(outcomes[5]).startswith("the store refused this row: unsupported Unicode escape sequence")
    assert store_counts(env) == (6, 6)


def test_on_sqlite_a_value_over_its_length_limit_fails_its_row_alone(env, submit, drain, fake_embedder):
    # A first row, under the usual limit: sqlite-vec allocates its chunk blobs (over the small limit) once.
    submit(write_csv(env.dir / "first.csv", "id,text\n0,row 0\n"), model=fake_embedder.name, id_column="id")
    drain(model=fake_embedder)
    rows = "".join(f"{n},{'x ' * 1000 if n == 5 else f'row {n}'}\n" for n in range(1, 11))
    result = submit(write_csv(env.dir / "p.csv", "id,text\n" + rows), model=fake_embedder.name, id_column="id",
                    text_columns=("text",))
    store = open_store(env.db)
    store.connection.limit(apsw.SQLITE_LIMIT_LENGTH, 1500)  # a small limit: row 5's text is 2,000 bytes
    drain(model=fake_embedder, store=store)
    assert store_counts(env) == (10, 10)
    assert SubmissionRecords(env.connection).failures(result.id) == [{
        "row_number": 5, "id": "5", "permanent": True,
        "reason": "the store refused this row: string or blob too big"}]


def test_a_collection_name_too_long_for_a_store_rejects_the_submit(env, submit, fake_embedder):
    with pytest.raises(InputError, match=r"^collection name too long: 1,001 bytes \(UTF-8\), at most 1,000$"):
        submit(hundred_rows(env), model=fake_embedder.name, collection="c" * 1001)
    assert env.connection.zcard("csvembed:submissions") == 0
