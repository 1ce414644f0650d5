"""Every command through the real CLI: JSON keys, exit codes, export round trips, search filters, delete."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import STORES, run_cli, write_csv
from csvembed.store import open_store
from csvembed.submissions import SubmissionRecords

pytestmark = [pytest.mark.parametrize("env", STORES, indirect=True), pytest.mark.slow]

CATALOGUE = (
    "sku,title,colour,body\n"
    '001,Trail boot,red,"Waterproof leather hiking boot, for wet trails"\n'
    "002,Rain jacket,blue,Light waterproof jacket for hiking in the rain\n"
    "003,Espresso machine,red,Makes strong coffee with a 15 bar pump\n"
    "004,Winter boot,blue,Warm insulated boot for snow and ice\n"
    "005,Kettle,red,\n"
)


@pytest.fixture
def catalogue(env, submit, drain):
    """The catalogue submitted and worked; row 5 fails (empty text)."""
    path = write_csv(env.dir / "catalogue.csv", CATALOGUE)
    result = submit(path, id_column="sku", text_columns=("body",))
    drain()
    return path, result.id


def cli_json(env, *args):
    result = run_cli(env, *args)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout), result.returncode


def test_status_list_and_workers_json(env, catalogue):
    _, submission_id = catalogue
    snapshot, code = cli_json(env, "status", submission_id, "--json")
    assert code == 0
    assert {"id", "state", "total", "done", "failed", "pending", "skipped", "rate", "eta", "in_progress",
            "workers", "collection", "file", "queue", "created_at"} <= set(snapshot)
    assert (snapshot["id"], snapshot["state"], snapshot["total"], snapshot["done"], snapshot["failed"],
            snapshot["pending"]) == (submission_id, "partial", 5, 4, 1, 0)

    listed, _ = cli_json(env, "list", "--json")
    assert listed == [{"id": submission_id, "collection": "catalogue", "file": str(catalogue[0]),
                       "created_at": snapshot["created_at"], "total": 5, "done": 4, "failed": 1, "skipped": 0,
                       "pending": 0, "state": "partial"}]
    workers, _ = cli_json(env, "workers", "--json")
    assert workers == []  # the burst worker is gone

    plain = run_cli(env, "status", submission_id)
    assert plain.returncode == 0
    assert plain.stdout.decode().startswith(f"{submission_id} partial: 4/5 done, 1 failed, 0 in progress, 0 pending")
    assert b"\x1b" not in plain.stdout + plain.stderr


def test_wait_exit_codes(env, catalogue, submit, drain):
    _, failed_id = catalogue
    assert run_cli(env, "status", failed_id, "--wait").returncode == 1
    good = submit(write_csv(env.dir / "good.csv", "a\nfine row\n"))
    drain()
    waited = run_cli(env, "status", good.id, "--wait", "--json")
    assert waited.returncode == 0
    assert json.loads(waited.stdout)["state"] == "done"
    assert run_cli(env, "status", "nosuchid", "--wait").returncode == 2


def test_workers_lists_a_live_worker(env):
    import subprocess
    import sys
    import time

    worker = subprocess.Popen([sys.executable, "-m", "csvembed", "worker", "--batch-size", "16"], env=env.environ,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not env.connection.keys("rq:worker:*") and time.monotonic() < deadline:
            time.sleep(0.2)
        workers, _ = cli_json(env, "workers", "--json")
    finally:
        worker.terminate()
        worker.wait(30)
    assert len(workers) == 1
    info = workers[0]
    assert (info["queues"], info["batch_size"], info["state"], info["rows_done"]) == (["csvembed"], 16, "idle", 0)
    assert info["name"].rsplit(".", 2)[1] == str(worker.pid)


def test_export_round_trips_in_every_format(env, catalogue, tmp_path):
    path, submission_id = catalogue
    with path.open(newline="") as fh:
        expected_rows = [row for row in csv.DictReader(fh)][:4]  # row 5 failed, so it was not stored
    store = open_store(env.db)
    expected_vectors = np.stack([vector for *_, vector in store.rows_of_submission(submission_id)])
    store.close()

    jsonl = run_cli(env, "export", submission_id)
    assert jsonl.returncode == 0, jsonl.stderr
    records = [json.loads(line) for line in jsonl.stdout.decode().splitlines()]
    assert [r["row"] for r in records] == expected_rows
    assert [r["row_number"] for r in records] == [1, 2, 3, 4]
    assert records[0]["text"] == "Waterproof leather hiking boot, for wet trails"
    np.testing.assert_array_equal(np.array([r["vector"] for r in records], dtype=np.float32), expected_vectors)

    out_csv = tmp_path / "out.csv"
    assert run_cli(env, "export", submission_id, "--format", "csv", "-o", str(out_csv)).returncode == 0
    with out_csv.open(newline="") as fh:
        exported = list(csv.DictReader(fh))
    assert [{k: row[k] for k in ("sku", "title", "colour", "body")} for row in exported] == expected_rows
    vectors = np.array([[float(row[f"embedding_{i}"]) for i in range(384)] for row in exported], dtype=np.float32)
    np.testing.assert_array_equal(vectors, expected_vectors)

    out_parquet = tmp_path / "out.parquet"
    assert run_cli(env, "export", submission_id, "--format", "parquet", "-o", str(out_parquet)).returncode == 0
    table = pq.read_table(out_parquet).to_pylist()
    assert [{k: row[k] for k in ("sku", "title", "colour", "body")} for row in table] == expected_rows
    np.testing.assert_array_equal(np.array([row["embedding"] for row in table], dtype=np.float32), expected_vectors)

    bad = run_cli(env, "export", submission_id, "--format", "xml")
    assert (bad.returncode, bad.stderr) == (
        2, b"csvembed: error: unknown --format 'xml': use one of jsonl, csv, parquet\n")


def test_search_filters(env, catalogue, submit, drain):
    _, first_id = catalogue
    other = submit(write_csv(env.dir / "more.csv", "sku,title,colour,body\n9,Hiking sock,red,Wool sock for hiking\n"),
                   id_column="sku", text_columns=("body",), collection="catalogue")
    drain()
    everything, _ = cli_json(env, "search", "waterproof hiking", "-k", "10", "--json")
    assert len(everything) == 5
    assert [h["distance"] for h in everything] == sorted(h["distance"] for h in everything)

    red, _ = cli_json(env, "search", "waterproof hiking", "-k", "10", "--where", "colour=red", "--json")
    assert sorted(h["id"] for h in red) == ["001", "003", "9"]
    assert [h["distance"] for h in red] == sorted(h["distance"] for h in red)
    assert [h["id"] for h in red] == [h["id"] for h in everything if h["row"]["colour"] == "red"]
    for hit in red:  # the same distances as the unfiltered search
        unfiltered = next(h for h in everything if h["id"] == hit["id"])
        assert hit["distance"] == pytest.approx(unfiltered["distance"], abs=1e-6)

    only_first, _ = cli_json(env, "search", "waterproof hiking", "-k", "10", "--submission", first_id, "--json")
    assert sorted(h["id"] for h in only_first) == ["001", "002", "003", "004"]
    both, _ = cli_json(env, "search", "hiking", "--submission", other.id, "--where", "colour=red", "--json")
    assert [h["id"] for h in both] == ["9"]
    table = run_cli(env, "search", "waterproof hiking", "-k", "2", "--column", "colour")
    lines = table.stdout.decode().splitlines()
    assert lines[0].split() == ["distance", "collection", "id", "colour", "text"]
    nearest = everything[0]
    assert lines[1].split()[:4] == [f"{nearest['distance']:.4f}", nearest["collection"], nearest["id"],
                                    nearest["row"]["colour"]]
    bad = run_cli(env, "search", "x", "--where", "colour")
    assert (bad.returncode, bad.stderr) == (2, b"csvembed: error: --where takes COLUMN=VALUE, not 'colour'\n")


def test_delete_removes_rows_vectors_and_records(env, catalogue):
    _, submission_id = catalogue
    deleted, _ = cli_json(env, "delete", submission_id, "--json")
    assert deleted == {"id": submission_id, "rows": 4, "jobs": 1}  # row 5's failed job
    assert open_store(env.db).counts() == (0, 0)
    assert SubmissionRecords(env.connection).snapshot(submission_id) is None
    assert env.connection.keys(f"csvembed:sub:{submission_id}*") == []
    assert env.connection.keys("rq:job:*") == []
    assert run_cli(env, "status", submission_id).returncode == 2
