"""The fast tier's pipeline: the real Producer, Redis, BatchWorker and SQLite store, with the HashEmbedder double.

No model is loaded and no subprocess is spawned, so these run in well under a second each. What they
check is the queue and store mechanics: which rows are stored, exactly as written, and the counts.
"""

from __future__ import annotations

import json

import numpy as np
from rq import Queue

from conftest import store_counts, stored_rows, write_csv
from csvembed.jobs import SERIALIZER
from csvembed.submissions import SubmissionRecords

# Quoted separators, an empty field, leading zeros and non-ASCII text: all must come back as written.
CSV = (
    "sku,title,price,note\n"
    '007,"Boot, leather",129.90,\n'
    "010,Wool hat,19,日本の茶\n"
    '011,"Tent ""Alpine"" 2p",349,"two lines\nof note"\n'
    "012,Map,5,x\n"
    "013,Compass,25,y\n"
)
EXPECTED = {  # id -> (row_number, text, row)
    "007": (1, "Boot, leather", {"sku": "007", "title": "Boot, leather", "price": "129.90", "note": ""}),
    "010": (2, "Wool hat", {"sku": "010", "title": "Wool hat", "price": "19", "note": "日本の茶"}),
    "011": (3, 'Tent "Alpine" 2p', {"sku": "011", "title": 'Tent "Alpine" 2p', "price": "349",
                                    "note": "two lines\nof note"}),
    "012": (4, "Map", {"sku": "012", "title": "Map", "price": "5", "note": "x"}),
    "013": (5, "Compass", {"sku": "013", "title": "Compass", "price": "25", "note": "y"}),
}


def test_submit_then_drain_stores_every_row_exactly(env, submit, drain, fake_embedder):
    path = write_csv(env.dir / "products.csv", CSV)
    result = submit(path, model=fake_embedder.name, id_column="sku", text_columns=("title",))
    assert (result.collection, result.total, result.enqueued, result.skipped) == ("products", 5, 5, 0)
    queued = SubmissionRecords(env.connection).snapshot(result.id)
    assert (queued.state, queued.total, queued.pending, queued.done) == ("running", 5, 5, 0)

    drain(batch_size=2, model=fake_embedder)

    rows = stored_rows(env)
    assert [(submission, row_id, number, text, json.loads(row)) for submission, row_id, number, text, row, _ in rows] \
        == [(result.id, row_id, number, text, row) for row_id, (number, text, row) in EXPECTED.items()]
    for _, _, _, text, _, vector in rows:
        np.testing.assert_array_equal(vector, fake_embedder.vector(text))
    assert store_counts(env) == (5, 5)
    # Batches of at most two texts, and each text embedded once.
    assert all(len(call) <= 2 for call in fake_embedder.calls)
    assert sorted(text for call in fake_embedder.calls for text in call) == sorted(t for _, t, _ in EXPECTED.values())

    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.state, snapshot.total, snapshot.done, snapshot.failed, snapshot.skipped, snapshot.pending) == (
        "done", 5, 5, 0, 0, 0)
    assert snapshot.columns == ["sku", "title", "price", "note"]
    assert Queue("csvembed", connection=env.connection, serializer=SERIALIZER).count == 0


def test_an_empty_text_fails_alone_and_the_rest_are_stored(env, submit, drain, fake_embedder):
    path = write_csv(env.dir / "gaps.csv", "id,text\n1,alpha\n2,\n3,gamma\n")
    result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    drain(batch_size=64, model=fake_embedder)

    assert [(row_id, text) for _, row_id, _, text, _, _ in stored_rows(env)] == [("1", "alpha"), ("3", "gamma")]
    records = SubmissionRecords(env.connection)
    assert records.failures(result.id) == [{"row_number": 2, "id": "2", "reason": "empty text: nothing to embed",
                                            "permanent": True}]
    snapshot = records.snapshot(result.id)
    assert (snapshot.state, snapshot.done, snapshot.failed, snapshot.pending) == ("partial", 2, 1, 0)


def test_resubmitting_enqueues_only_changed_rows(env, submit, drain, fake_embedder):
    path = write_csv(env.dir / "items.csv", "id,text\n1,alpha\n2,beta\n3,gamma\n")
    first = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    drain(model=fake_embedder)

    again = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    assert (again.total, again.enqueued, again.skipped) == (3, 0, 3)
    assert SubmissionRecords(env.connection).snapshot(again.id).state == "done"

    write_csv(path, "id,text\n1,alpha\n2,BETA\n3,gamma\n4,delta\n")
    changed = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    assert (changed.total, changed.enqueued, changed.skipped) == (4, 2, 2)
    fake_embedder.calls.clear()
    drain(model=fake_embedder)
    assert fake_embedder.calls == [["BETA", "delta"]]  # one batch, length-sorted, only the changed rows

    by_id = {row_id: (submission, text) for submission, row_id, _, text, _, _ in stored_rows(env)}
    assert by_id == {"1": (first.id, "alpha"), "2": (changed.id, "BETA"), "3": (first.id, "gamma"),
                     "4": (changed.id, "delta")}
    assert store_counts(env) == (4, 4)
    snapshot = SubmissionRecords(env.connection).snapshot(changed.id)
    assert (snapshot.state, snapshot.total, snapshot.done, snapshot.skipped, snapshot.pending) == ("done", 4, 2, 2, 0)
