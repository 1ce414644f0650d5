"""The library facade every face calls: one Csvembed per deployment, ids checked in one place."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest

from conftest import write_csv
from csvembed.api import Csvembed
from csvembed.errors import InputError, NoStore, UnknownSubmission
from csvembed.producer import SubmitOptions
from csvembed.reader import open_source

ROWS = "sku,title\nA1,red boot\nA2,blue hat\nA3,\nA4,green scarf\n"


@pytest.fixture
def api(env, fake_embedder, monkeypatch) -> Csvembed:
    """The facade on the test's Redis and store, embedding queries with the test double."""
    monkeypatch.setattr("csvembed.search.load_embedder", lambda settings, **options: fake_embedder)
    return Csvembed(replace(env.settings, model=fake_embedder.name), env.connection)


def test_a_submission_goes_round_through_the_facade(api, env, drain, fake_embedder):
    path = write_csv(env.dir / "gear.csv", ROWS)
    result = api.submit(open_source(str(path)), SubmitOptions(text_columns=("title",), id_column="sku"))
    assert (result.total, result.enqueued, result.skipped, result.collection) == (4, 4, 0, "gear")
    drain(model=fake_embedder)

    status = api.status(result.id).as_json()
    assert {key: status[key] for key in ("id", "state", "total", "done", "failed", "pending")} == {
        "id": result.id, "state": "partial", "total": 4, "done": 3, "failed": 1, "pending": 0}
    assert [line.snapshot.id for line in api.statuses()] == [result.id]
    assert api.failures(result.id) == [
        {"row_number": 3, "id": "A3", "reason": "empty text: nothing to embed", "permanent": True}]

    [hit] = api.search("blue hat", k=1)
    assert (hit.id, hit.text, hit.distance) == ("A2", "blue hat", pytest.approx(0, abs=1e-6))

    target = io.BytesIO()
    exported = api.export(result.id, "jsonl", target)
    records = [json.loads(line) for line in target.getvalue().splitlines()]
    assert (exported.records, exported.notes) == (3, [f"1 failed (csvembed failures {result.id})"])
    assert [(r["id"], r["text"], r["vector"]) for r in records] == [
        (text_id, text, pytest.approx(fake_embedder.vector(text).tolist()))
        for text_id, text in [("A1", "red boot"), ("A2", "blue hat"), ("A4", "green scarf")]]

    deleted = api.delete(result.id)
    assert (deleted.id, deleted.rows, deleted.jobs) == (result.id, 3, 1)
    assert api.recent() == []


def test_every_method_that_takes_an_id_refuses_an_unknown_one_with_the_same_line(api, env):
    write_csv(env.dir / "x.csv", ROWS)  # a store is not needed to know that the id is unknown
    calls = [api.snapshot, api.require, api.status, api.failures, api.retry, api.delete,
             lambda sid: api.export(sid, "jsonl", io.BytesIO()), lambda sid: api.check_export(sid, "csv")]
    for call in calls:
        with pytest.raises(UnknownSubmission) as raised:
            call("nope")
        assert str(raised.value) == "no submission with id 'nope'"


def test_export_checks_format_and_store_before_writing(api, env):
    result = api.submit(open_source(str(write_csv(env.dir / "x.csv", ROWS))), SubmitOptions(text_columns=("title",)))
    with pytest.raises(InputError) as raised:
        api.check_export(result.id, "xml")
    assert str(raised.value) == "unknown --format 'xml': use one of jsonl, csv, parquet"
    with pytest.raises(NoStore) as raised:  # submitted, but no worker has stored a row yet
        api.check_export(result.id, "jsonl")
    assert str(raised.value) == f"no store at {env.db}: nothing has been stored there yet"


def test_the_query_model_is_loaded_once_for_many_searches(api, env, drain, fake_embedder, monkeypatch):
    api.submit(open_source(str(write_csv(env.dir / "x.csv", ROWS))), SubmitOptions(text_columns=("title",)))
    drain(model=fake_embedder)
    loads = []
    monkeypatch.setattr("csvembed.search.load_embedder",
                        lambda settings, **options: loads.append(settings) or fake_embedder)
    assert [api.search("red boot", k=1)[0].text for _ in range(3)] == ["red boot"] * 3
    assert len(loads) == 1


def test_the_embedded_redis_commands_refuse_a_configured_url(api):
    with pytest.raises(InputError) as raised:
        api.local_redis()
    assert "names your own Redis" in str(raised.value) and "csvembed shows only its embedded one" in str(raised.value)


def test_the_worker_refuses_a_nul_in_a_queue_name_as_submit_does(api, env):
    # submit and the HTTP face refused one; the library's worker listened on it (the CLI cannot pass one).
    with pytest.raises(InputError) as refused:
        api.work(["q\x00"], burst=True)
    assert str(refused.value) == "--queue 'q\\x00' holds a NUL character, which a name cannot"
    assert env.connection.keys("rq:*") == []
