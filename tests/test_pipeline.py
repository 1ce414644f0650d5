"""End to end with the real model, the real store and a real Redis: submit -> worker -> store -> status/search."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rq import Queue

from conftest import STORES, run_cli, store_counts, stored_rows, write_csv
from csvembed.jobs import SERIALIZER, RowTask
from csvembed.submissions import SubmissionRecords

pytestmark = [pytest.mark.parametrize("env", STORES, indirect=True), pytest.mark.slow]

SAMPLE = Path(__file__).parent.parent / "sample_data" / "products.csv"


def stored(env) -> list[tuple[str, int, str, str, np.ndarray]]:
    """(id, row_number, text, row_json, vector) of every stored row."""
    return [row[1:] for row in stored_rows(env)]


def test_sample_file_end_to_end_through_the_cli(env, embedder):
    submitted = run_cli(env, "submit", str(SAMPLE), "--text-column", "title", "--text-column", "description",
                        "--id-column", "sku")
    assert submitted.returncode == 0, submitted.stderr
    submission_id = submitted.stdout.decode().strip()
    assert len(submission_id) == 10 and submission_id.isalnum()
    assert b"submitted 320 rows" in submitted.stderr

    worked = run_cli(env, "worker", "--burst")
    assert worked.returncode == 0, worked.stderr

    status = run_cli(env, "status", submission_id, "--json")
    assert status.returncode == 0
    snapshot = json.loads(status.stdout)
    assert (snapshot["state"], snapshot["total"], snapshot["done"], snapshot["failed"], snapshot["pending"]) == (
        "done", 320, 320, 0, 0)

    with SAMPLE.open(newline="", encoding="utf-8") as fh:
        expected = {row["sku"]: row for row in csv.DictReader(fh)}
    rows = stored(env)
    assert store_counts(env) == (320, 320)
    assert sorted(row_id for row_id, *_ in rows) == sorted(expected)
    texts = [text for _, _, text, _, _ in rows]
    assert texts == [f"{expected[i]['title']}\n{expected[i]['description']}" for i, *_ in rows]
    assert [json.loads(row_json) for _, _, _, row_json, _ in rows] == [expected[i] for i, *_ in rows]
    model_vectors = np.stack([embedder.encode([text])[0] for text in texts])
    np.testing.assert_allclose(np.stack([v for *_, v in rows]), model_vectors, atol=1e-5)

    found = run_cli(env, "search", "waterproof hiking boots", "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 3
    assert all("Waterproof Hiking Boot" in hit["row"]["title"] for hit in hits)
    assert [hit["distance"] for hit in hits] == sorted(hit["distance"] for hit in hits)
    assert set(hits[0]) == {"collection", "submission", "row_number", "id", "distance", "text", "row", "match"}
    assert hits[0]["match"] == {"start": 0, "end": len(hits[0]["text"])}  # a short row: one window, all of it
    assert hits[0]["row"] == expected[hits[0]["id"]]
    assert hits[0]["collection"] == "products" and hits[0]["submission"] == submission_id


TRICKY = (
    "\ufeffcode,title,body\r\n"
    '007,"Boots, waterproof","She said ""dry feet"", twice"\r\n'
    '010,,"first line\nsecond line"\r\n'
    '011,Crème brûlée,"windows\r\nnewline"\r\n'
    '012,日本の茶,\r\n'
)


def test_stdin_template_and_exact_fields(env, drain):
    submitted = run_cli(env, "submit", "-", "--template", "{title} | {body}", "--id-column", "code", "--json",
                        input=TRICKY.encode())
    assert submitted.returncode == 0, submitted.stderr
    result = json.loads(submitted.stdout)
    assert (result["rows"], result["enqueued"], result["skipped"], result["queue"], result["collection"]) == (
        4, 4, 0, "csvembed", f"stdin-{result['id']}")
    drain()
    rows = {row_id: (text, json.loads(row_json)) for row_id, _, text, row_json, _ in stored(env)}
    assert rows == {
        "007": ('Boots, waterproof | She said "dry feet", twice',
                {"code": "007", "title": "Boots, waterproof", "body": 'She said "dry feet", twice'}),
        "010": (" | first line\nsecond line", {"code": "010", "title": "", "body": "first line\nsecond line"}),
        "011": ("Crème brûlée | windows\r\nnewline",
                {"code": "011", "title": "Crème brûlée", "body": "windows\r\nnewline"}),
        "012": ("日本の茶 | ", {"code": "012", "title": "日本の茶", "body": ""}),
    }


def test_default_text_is_every_column_as_name_value_lines(env, submit, drain):
    path = write_csv(env.dir / "two.csv", "a,b\n1,x y\n")
    submit(path)
    drain()
    assert [text for _, _, text, _, _ in stored(env)] == ["a: 1\nb: x y"]


def test_a_job_run_twice_leaves_one_row_and_one_vector(env, submit, drain):
    path = write_csv(env.dir / "t.csv", "id,text\n1,alpha beta\n2,gamma delta\n")
    result = submit(path, id_column="id", text_columns=("text",))
    drain()
    queue = Queue("csvembed", connection=env.connection, serializer=SERIALIZER)
    queue.enqueue_many([RowTask(result.id, 1, "1", "alpha beta", ["1", "alpha beta"]).enqueue_data()])
    drain()
    assert store_counts(env) == (2, 2)
    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.done, snapshot.failed, snapshot.pending, snapshot.state) == (2, 0, 0, "done")


def test_batch_sizes_store_identical_vectors(env, submit, drain):
    lines = "".join(f"{i},row number {i} says {'many words ' * (i % 9)}\n" for i in range(1, 41))
    path = write_csv(env.dir / "b.csv", "id,text\n" + lines)
    vectors = {}
    for batch_size in (1, 7, 64):
        submit(path, id_column="id", text_columns=("text",), force=True)
        drain(batch_size=batch_size)
        vectors[batch_size] = {row_id: vector for row_id, _, _, _, vector in stored(env)}
        assert store_counts(env) == (40, 40)
    for batch_size in (7, 64):
        for row_id, vector in vectors[1].items():
            np.testing.assert_allclose(vectors[batch_size][row_id], vector, atol=1e-5)


def test_resubmitting_skips_unchanged_rows_and_updates_changed_ones(env, submit, drain):
    path = write_csv(env.dir / "r.csv", "id,text,price\n1,red shoe,10\n2,blue hat,20\n3,green scarf,30\n")
    first = submit(path, id_column="id", text_columns=("text",))
    drain()
    again = submit(path, id_column="id", text_columns=("text",))
    assert (again.total, again.enqueued, again.skipped) == (3, 0, 3)
    assert Queue("csvembed", connection=env.connection).count == 0
    snapshot = SubmissionRecords(env.connection).snapshot(again.id)
    assert (snapshot.state, snapshot.skipped, snapshot.pending) == ("done", 3, 0)

    write_csv(path, "id,text,price\n1,red shoe,10\n2,blue hat,25\n3,green scarf,30\n4,new sock,5\n")
    changed = submit(path, id_column="id", text_columns=("text",))
    assert (changed.total, changed.enqueued, changed.skipped) == (4, 2, 2)
    drain()
    rows = {row_id: (sub, json.loads(row_json)["price"]) for sub, row_id, _, _, row_json, _ in stored_rows(env)}
    assert rows == {"1": (first.id, "10"), "2": (changed.id, "25"), "3": (first.id, "30"), "4": (changed.id, "5")}
    assert store_counts(env) == (4, 4)

    forced = submit(path, id_column="id", text_columns=("text",), force=True)
    assert (forced.enqueued, forced.skipped) == (4, 0)
    other_model = run_cli(env, "--model", "/nonexistent/model", "submit", str(path), "--id-column", "id")
    assert (other_model.returncode, other_model.stderr.decode()) == (2, (
        "csvembed: error: the collection 'r' holds rows of the model all-MiniLM-L6-v2, not /nonexistent/model:"
        " use another --collection, or delete the collection first (csvembed delete --collection r)\n"))
    elsewhere = run_cli(env, "--model", "/nonexistent/model", "submit", str(path), "--id-column", "id",
                        "--collection", "r-other")
    assert elsewhere.returncode == 0, elsewhere.stderr  # the model is only loaded by workers


def test_a_duplicated_id_keeps_the_later_row_whatever_the_processing_order(env, submit, drain):
    # Row 3 is shorter, so submit's length sort puts it first in the queue and in the batch.
    path = write_csv(env.dir / "d.csv",
                     "id,text\nk,the first and much longer version of this row\nm,other\nk,second\n")
    result = submit(path, id_column="id", text_columns=("text",))
    for batch_size in (64, 1):
        drain(batch_size=batch_size)
        rows = {row_id: (number, text) for row_id, number, text, _, _ in stored(env)}
        assert rows == {"k": (3, "second"), "m": (2, "other")}
        snapshot = SubmissionRecords(env.connection).snapshot(result.id)
        assert (snapshot.done, snapshot.failed, snapshot.total) == (3, 0, 3)
        result = submit(path, id_column="id", text_columns=("text",), force=True)
