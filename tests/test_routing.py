"""Rows go to a worker of their model: each model id has its own queue, so models never mix in a store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rq import Queue
from typer.testing import CliRunner

from conftest import FAKE_QUEUE, write_csv
from csvembed.cli import app
from csvembed.cli.status_view import plain
from csvembed.errors import InputError
from csvembed.figures import lines
from csvembed.jobs import SERIALIZER
from csvembed.monitor import Monitor
from csvembed.producer import Producer, SubmitOptions
from csvembed.reader import open_source
from csvembed.retry import retry_failed
from csvembed.routing import model_queue
from csvembed.store import open_store
from csvembed.submissions import SubmissionRecords
from csvembed.worker import run_worker
from doubles import HashEmbedder, OtherModelEmbedder


def submit_for(env, db: str, model: str, text: str, **options):
    path = write_csv(env.dir / f"{model}.csv", text)
    return Producer(env.connection, db, model).submit(open_source(str(path)), SubmitOptions(**options))


def stored(db: str, submission: str) -> dict[str, np.ndarray]:
    """text -> vector of a submission's rows in the store at db."""
    store = open_store(db)
    try:
        return {text: vector for _, _, text, _, vector in store.rows_of_submission(submission)}
    finally:
        store.close()


def queued(env, name: str) -> int:
    return Queue(name, connection=env.connection, serializer=SERIALIZER).count


def test_the_default_model_keeps_the_plain_queue_and_others_get_their_own():
    assert model_queue("csvembed", "all-MiniLM-L6-v2") == "csvembed"
    assert model_queue("csvembed", "all-MiniLM-L6-v2+int8") == "csvembed@all-MiniLM-L6-v2+int8-c4ee2d73"
    assert model_queue("csvembed", HashEmbedder.name) == FAKE_QUEUE  # stable: the tests' literal
    assert model_queue("batch", "/models/a/e5") != model_queue("batch", "/models/b/e5")  # same last part
    assert model_queue("batch", "/models/a/e5").startswith("batch@e5-")


@pytest.mark.parametrize("name", ["", " ", "\t"])
@pytest.mark.parametrize("model", ["all-MiniLM-L6-v2", "/models/e5"])
def test_an_empty_queue_name_is_refused(name, model):
    with pytest.raises(InputError) as refused:
        model_queue(name, model)
    assert str(refused.value) == "--queue must name a queue, not be empty"


def test_each_model_s_rows_are_embedded_by_a_worker_of_that_model(env, drain):
    model_a, model_b = HashEmbedder(), OtherModelEmbedder()
    # One store per model: a store holds one vector space.
    db_a, db_b = env.db, str(env.dir / "other.db")
    a = submit_for(env, db_a, model_a.name, "text\nalpha\nbeta\ngamma\n", text_columns=("text",))
    b = submit_for(env, db_b, model_b.name, "text\ndelta\nepsilon\n", text_columns=("text",))
    assert (a.queue, b.queue) == (model_queue("csvembed", model_a.name), model_queue("csvembed", model_b.name))
    assert a.queue != b.queue and queued(env, "csvembed") == 0

    # A worker of model A takes A's rows only: B's stay queued, untouched, for a worker of B.
    drain(model=model_a, queues=(model_queue("csvembed", model_a.name),), store=open_store(db_a))
    assert sorted(text for call in model_a.calls for text in call) == ["alpha", "beta", "gamma"]
    assert {text: vector.tolist() for text, vector in stored(db_a, a.id).items()} == {
        text: model_a.vector(text).tolist() for text in ("alpha", "beta", "gamma")}
    assert (queued(env, a.queue), queued(env, b.queue), stored(db_b, b.id)) == (0, 2, {})

    # status says why B waits, in the plain line and in --json.
    reading = Monitor(env.connection).read([a.id, b.id])
    line_a, line_b = lines(reading, 0.0)
    assert (line_a.no_worker_for_model, line_b.no_worker_for_model) == (None, model_b.name)
    assert plain(reading, 0.0)[1].endswith(f", 0 workers, waiting: no live worker for model {model_b.name}")
    shown = CliRunner().invoke(app, ["status", b.id, "--json"])
    assert json.loads(shown.stdout)["no_worker_for_model"] == model_b.name
    workers = CliRunner().invoke(app, ["workers"])
    assert workers.stderr == (f"0 workers\nqueue {b.queue}: 2 waiting, 0 in progress, 0 workers,"
                              f" waiting: no live worker for model {model_b.name}\n")

    drain(model=model_b, queues=(b.queue,), store=open_store(db_b))
    assert {text: vector.tolist() for text, vector in stored(db_b, b.id).items()} == {
        text: model_b.vector(text).tolist() for text in ("delta", "epsilon")}
    assert [SubmissionRecords(env.connection).snapshot(s.id).state for s in (a, b)] == ["done", "done"]
    assert lines(Monitor(env.connection).read([b.id]), 0.0)[0].no_worker_for_model is None


def test_a_worker_of_the_default_model_finds_nothing_on_another_model_s_queue(env):
    other = OtherModelEmbedder()
    submission = submit_for(env, str(env.dir / "other.db"), other.name, "text\ndelta\n", text_columns=("text",))
    # A burst worker with nothing queued for its model ends before loading it.
    assert run_worker(env.settings, ["csvembed"], burst=True, batch_size=8) is False
    assert queued(env, submission.queue) == 1


def test_a_user_given_queue_gets_the_model_suffix_and_retry_requeues_there(env, drain):
    other = OtherModelEmbedder()
    db = str(env.dir / "other.db")
    submission = submit_for(env, db, other.name, "id,text\n1,delta\n2,\n", text_columns=("text",),
                            queue="batch")
    assert submission.queue == model_queue("batch", other.name)
    drain(model=other, queues=(submission.queue,), store=open_store(db))
    assert [failure["reason"] for failure in SubmissionRecords(env.connection).failures(submission.id)] == [
        "empty text: nothing to embed"]
    assert retry_failed(env.connection, submission.id, include_permanent=True).requeued == [2]
    assert (queued(env, submission.queue), queued(env, "batch"), queued(env, "csvembed")) == (1, 0, 0)
