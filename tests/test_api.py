"""The library facade every face calls: one Csvembed per deployment, ids checked in one place."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace

import pytest

from conftest import write_csv
from csvembed.api import Csvembed
from csvembed.errors import InputError, NoStore, UnknownSubmission
from csvembed.producer import SubmitOptions
from csvembed.reader import open_source
from csvembed.settings import Settings

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


def test_settings_resolve_reads_the_same_variables_as_the_cli(monkeypatch, tmp_path):
    """A program's `Csvembed(Settings.resolve())` (and a plain RQ worker's row job) must find the
    deployment that `CSVEMBED_*` names, as the CLI does; a value passed in still wins."""
    monkeypatch.setenv("CSVEMBED_HOME", str(tmp_path))
    monkeypatch.setenv("CSVEMBED_DB", str(tmp_path / "elsewhere.db"))
    monkeypatch.setenv("CSVEMBED_REDIS_URL", "redis://127.0.0.1:6390/2")
    monkeypatch.setenv("CSVEMBED_MODEL", "some-model")
    monkeypatch.setenv("CSVEMBED_PRECISION", "int8")
    assert Settings.resolve() == Settings(home=tmp_path, db=str(tmp_path / "elsewhere.db"), model="some-model",
                                          redis_url="redis://127.0.0.1:6390/2", precision="int8")
    assert Settings.resolve(redis_url="redis://h/0", db="x.db", model="m", precision="fp32") == Settings(
        home=tmp_path, db="x.db", model="m", redis_url="redis://h/0", precision="fp32")
    for name in ("CSVEMBED_DB", "CSVEMBED_REDIS_URL", "CSVEMBED_MODEL", "CSVEMBED_PRECISION"):
        monkeypatch.delenv(name)
    assert Settings.resolve() == Settings(home=tmp_path, db=str(tmp_path / "csvembed.db"),
                                          model="all-MiniLM-L6-v2", redis_url=None, precision="fp32")


def test_a_submission_finished_at_submit_keeps_its_elapsed_time(api, env, drain, fake_embedder):
    """A re-run whose every row is skipped is done once submit returns: its elapsed time must stop there,
    not grow with each later `status` (no worker ever marks it, so no worker sets its end)."""
    from csvembed.figures import lines

    path = write_csv(env.dir / "gear.csv", ROWS.replace("A3,\n", ""))
    options = SubmitOptions(text_columns=("title",), id_column="sku")
    api.submit(open_source(str(path)), options)
    drain(model=fake_embedder)
    rerun = api.submit(open_source(str(path)), options)
    assert (rerun.total, rerun.skipped) == (3, 3)
    reading = api.reading([rerun.id])
    now = time.time()
    [line_now] = lines(reading, now)
    [line_later] = lines(reading, now + 3600)
    assert line_now.snapshot.state == "done"
    assert line_later.elapsed == line_now.elapsed < 60


def test_the_worker_refuses_a_nul_in_a_queue_name_as_submit_does(api, env):
    # submit and the HTTP face refused one; the library's worker listened on it (the CLI cannot pass one).
    with pytest.raises(InputError) as refused:
        api.work(["q\x00"], burst=True)
    assert str(refused.value) == "--queue 'q\\x00' holds a NUL character, which a name cannot"
    assert env.connection.keys("rq:*") == []
