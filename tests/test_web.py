"""The HTTP API under a real uvicorn on a loopback port, driven with httpx, against the real Redis and store."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import uvicorn

from conftest import FAKE_QUEUE
from csvembed.api import Csvembed

SAMPLE = Path(__file__).parent.parent / "sample_data" / "products.csv"
PRODUCT_OPTIONS = {"id_column": "sku", "text_columns": "title"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Served:
    """create_app under a real uvicorn in a thread, with an httpx client pointed at it."""

    def __init__(self, api: Csvembed, **app_options) -> None:
        from csvembed.web.app import create_app

        self.api = api
        self.port = free_port()
        config = uvicorn.Config(create_app(api, **app_options), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        return self.client

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def api(env, fake_embedder) -> Csvembed:
    api = Csvembed(replace(env.settings, model=fake_embedder.name), connection=env.connection)
    api.query_embedder = fake_embedder  # searches embed with the same test double the worker used
    return api


@pytest.fixture
def client(api) -> Iterator[httpx.Client]:
    with Served(api, interval=0.05) as client:
        yield client


def read_events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    """(event name, data) for each server-sent event of a streaming response."""
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


def test_healthz_and_unknown_submission(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.get("/submissions/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "no submission with id 'nope'"}


def test_submission_status_and_events_follow_the_worker(client, api, submit, drain, fake_embedder):
    result = submit(SAMPLE, model=fake_embedder.name, id_column="sku", text_columns=("title",))
    assert client.get(f"/submissions/{result.id}").json()["state"] == "running"
    events: list[tuple[str, dict]] = []

    def follow() -> None:
        with client.stream("GET", f"/submissions/{result.id}/events") as response:
            events.extend(read_events(response))

    follower = threading.Thread(target=follow)
    follower.start()
    drain(model=fake_embedder)
    follower.join(30)
    assert events[-1][0] == "end" and {name for name, _ in events[:-1]} <= {"status"}
    final = events[-1][1]
    now = client.get(f"/submissions/{result.id}").json()
    # Live workers are a reading of the moment: the burst worker may still be registered at the last event.
    assert {**final, "workers": None} == {**now, "workers": None}
    assert final["state"] == "done" and final["done"] == final["total"] == 320

    with client.stream("GET", "/events") as response:
        name, snapshot = next(read_events(response))
    assert name == "snapshot"
    assert set(snapshot) == {"at", "submissions", "queues", "workers", "failures"}
    assert {**snapshot["submissions"][0], "workers": None} == {**final, "workers": None}
    assert snapshot["queues"] == [{"name": FAKE_QUEUE, "waiting": 0, "in_progress": 0, "workers": 0,
                                    "waiting_for_store": 0, "store_waiting_since": None,
                                    "models": ["test-hash-embedder"], "unserved": False}]


def upload_multipart(client: httpx.Client, path: Path, name: str | None = None, timeout: float = 30,
                     **params) -> httpx.Response:
    with open(path, "rb") as file:
        return client.post("/submissions", params=params, files={"file": (name or path.name, file, "text/csv")},
                           timeout=timeout)


def queued_keys(env) -> list[bytes]:
    """What a submission leaves in Redis: its jobs and records."""
    return sorted(env.connection.keys("rq:job:*") + env.connection.keys("csvembed:sub:*"))


def test_multipart_upload_is_submitted_with_the_options(client, env, drain, fake_embedder):
    response = upload_multipart(client, SAMPLE, **PRODUCT_OPTIONS)
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"/submissions/{created['id']}"
    assert created == {"id": created["id"], "collection": "products", "queue": FAKE_QUEUE, "rows": 320,
                       "enqueued": 320, "skipped": 0, "failed": 0}
    status = client.get(f"/submissions/{created['id']}").json()
    assert status["text"] == "columns title" and status["file"] == "products.csv" and status["pending"] == 320
    drain(model=fake_embedder)
    assert client.get(f"/submissions/{created['id']}").json()["done"] == 320



@pytest.mark.parametrize("media_type", ["Multipart/Form-Data", "MULTIPART/FORM-DATA"])
def test_a_multipart_media_type_in_any_case_is_read_as_multipart(client, env, tmp_path, media_type):
    # Media types are case-insensitive (RFC 9110): this was taken for a raw CSV body, and the multipart
    # framing (boundary lines, part headers) was queued as 6 rows.
    path = tmp_path / "hats.csv"
    path.write_text("title\nboots\nhat\n")
    request = client.build_request("POST", "/submissions", files={"file": ("hats.csv", path.read_bytes(), "text/csv")})
    boundary = request.headers["content-type"].partition(";")[2]
    request.headers["content-type"] = f"{media_type};{boundary}"
    response = client.send(request)
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["collection"], created["rows"], created["enqueued"]) == ("hats", 2, 2)
    assert client.get(response.headers["location"]).json()["file"] == "hats.csv"

def test_raw_gzip_body_with_form_style_query_options(client, env, tmp_path):
    body = gzip.compress(SAMPLE.read_bytes())
    response = client.post("/submissions", content=body, headers={"Content-Type": "text/csv"},
                           params=[("id_column", "sku"), ("text_columns", "title"), ("text_columns", "category"),
                                   ("collection", "shop"), ("force", "true")])
    assert response.status_code == 201, response.text
    status = client.get(response.headers["location"]).json()
    assert (status["collection"], status["total"], status["text"]) == ("shop", 320, "columns title, category")


@pytest.mark.parametrize("params, message", [
    ({"text_columns": "nope"}, "unknown --text-column 'nope'"),
    ({"colour": "red"}, "unknown option 'colour'"),
    ({"force": "maybe"}, "option 'force' takes true or false, not 'maybe'"),
    ({"max_pending": "many"}, "option 'max_pending' takes a number, not 'many'"),
    ({"encoding": "utf-8\x00"}, "unknown encoding 'utf-8\\x00'"),  # no codec name holds a NUL: not a 500
])
def test_bad_options_are_400_and_enqueue_nothing(client, env, params, message):
    response = upload_multipart(client, SAMPLE, **params)
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert queued_keys(env) == []


def test_a_bad_csv_gets_the_cli_message_and_enqueues_nothing(client, env, tmp_path):
    from typer.testing import CliRunner

    from csvembed.cli import app

    bad = tmp_path / "ragged.csv"
    bad.write_text("a,b\n1,2\n3,4,5\n")
    response = upload_multipart(client, bad)
    assert response.status_code == 400
    assert queued_keys(env) == []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        cli = CliRunner().invoke(app, ["submit", "ragged.csv"])
    assert cli.exit_code == 2
    assert cli.stderr.strip() == f"csvembed: error: {response.json()['detail']}"


@pytest.mark.parametrize("option, value", [("collection", "red\x1b[31m"), ("collection", "a\nb"), ("queue", "q\rx"),
                                           ("queue", "csi\x9b2J"), ("collection", "del\x7f")])
def test_a_control_character_in_a_name_is_refused_alike_over_http_and_the_cli(client, env, option, value):
    # list, status and workers print names as they are: an escape sequence in one reached every terminal that
    # listed it (a token holder's upload could clear or recolour a user's screen), a line break split the lines.
    from typer.testing import CliRunner

    from csvembed.cli import app

    message = f"--{option} {value!r} holds a control character, which a name cannot"
    response = upload_multipart(client, SAMPLE, **PRODUCT_OPTIONS, **{option: value})
    assert (response.status_code, response.json()) == (400, {"detail": message})
    cli = CliRunner().invoke(app, ["submit", str(SAMPLE), "--id-column", "sku", "--text-column", "title",
                                   f"--{option}", value])
    assert (cli.exit_code, cli.stderr.strip()) == (2, f"csvembed: error: {message}")
    assert queued_keys(env) == []


@pytest.mark.parametrize("option, value, message", [
    # An empty --collection fell back to the file's stem; a blank one made a collection named " ".
    ("collection", "", "--collection must name a collection, not be empty"),
    ("collection", " ", "--collection must name a collection, not be empty"),
    # An empty --notify was dropped without a word: no webhook.
    ("notify", "", "--notify must be an http:// or https:// URL, not ''"),
])
def test_an_empty_name_is_refused_alike_over_http_and_the_cli(client, env, option, value, message):
    from typer.testing import CliRunner

    from csvembed.cli import app

    response = upload_multipart(client, SAMPLE, **PRODUCT_OPTIONS, **{option: value})
    assert (response.status_code, response.json()) == (400, {"detail": message})
    cli = CliRunner().invoke(app, ["submit", str(SAMPLE), "--id-column", "sku", "--text-column", "title",
                                   f"--{option}", value])
    assert (cli.exit_code, cli.stdout, cli.stderr) == (2, "", f"csvembed: error: {message}\n")
    assert queued_keys(env) == []


def test_an_empty_search_query_is_refused_alike_over_http_and_the_cli(client, env, drain, fake_embedder):
    # It embedded "" and listed the rows nearest to it: an arbitrary order, exit 0.
    from typer.testing import CliRunner

    from csvembed.cli import app

    assert upload_multipart(client, SAMPLE, **PRODUCT_OPTIONS).status_code == 201
    drain(model=fake_embedder)
    for query in ("", " "):
        response = client.get("/search", params={"q": query})
        assert (response.status_code, response.json()) == (400, {"detail": "the query is empty: say what to look for"})
        cli = CliRunner().invoke(app, ["search", query])
        assert (cli.exit_code, cli.stdout, cli.stderr) == (
            2, "", "csvembed: error: the query is empty: say what to look for\n")


@pytest.mark.parametrize("option, value", [("collection", "a\x00b"), ("queue", "q\x00")])
def test_a_nul_in_a_name_is_refused_alike_over_http_and_the_cli(client, env, option, value):
    # PostgreSQL text cannot hold a NUL; a shell cannot pass one, but a query or form field can.
    from typer.testing import CliRunner

    from csvembed.cli import app

    message = f"--{option} {value!r} holds a NUL character, which a name cannot"
    in_query = upload_multipart(client, SAMPLE, **PRODUCT_OPTIONS, **{option: value})
    with open(SAMPLE, "rb") as file:
        in_form = client.post("/submissions", params=PRODUCT_OPTIONS, data={option: value},
                              files={"file": ("products.csv", file, "text/csv")})
    for response in (in_query, in_form):
        assert response.status_code == 400
        assert response.json() == {"detail": message}
    cli = CliRunner().invoke(app, ["submit", str(SAMPLE), "--id-column", "sku", "--text-column", "title",
                                   f"--{option}", value])
    assert cli.exit_code == 2
    assert cli.stderr.strip() == f"csvembed: error: {message}"
    assert queued_keys(env) == []


@pytest.mark.parametrize("env", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)], indirect=True)
def test_a_nul_in_a_search_filter_is_400_on_either_store(env, client, drain, fake_embedder):
    # PostgreSQL refuses a NUL in any text parameter: the query failed as a 500 and a traceback.
    from typer.testing import CliRunner

    from csvembed.cli import app

    assert upload_multipart(client, SAMPLE, **PRODUCT_OPTIONS).status_code == 201
    drain(model=fake_embedder)
    for params, shown in [({"where": "title=a\x00b"}, "--where 'title=a\\x00b'"),
                          ({"where": "ti\x00tle=a"}, "--where 'ti\\x00tle=a'"),
                          ({"submission": "a\x00b"}, "--submission 'a\\x00b'")]:
        response = client.get("/search", params={"q": "boot", **params})
        assert (response.status_code, response.json()) == (
            400, {"detail": f"{shown} holds a NUL character, which nothing stored can"})
        option, value = next(iter(params.items()))
        cli = CliRunner().invoke(app, ["search", "boot", f"--{option}", value])
        assert cli.exit_code == 2
        assert cli.stderr.strip() == f"csvembed: error: {response.json()['detail']}"


def test_an_upload_over_the_limit_is_413_and_enqueues_nothing(api, env):
    with Served(api, max_upload=1000) as client:
        response = upload_multipart(client, SAMPLE)
        assert response.status_code == 413
        assert "larger than the server's limit of 1000 bytes" in response.json()["detail"]

        def unsized() -> Iterator[bytes]:  # chunked: no Content-Length to check up front
            yield SAMPLE.read_bytes()

        response = client.post("/submissions", content=unsized(), headers={"Content-Type": "text/csv"})
        assert response.status_code == 413
    assert queued_keys(env) == []


def test_search_export_failures_retry_delete(client, env, api, drain, fake_embedder):
    from conftest import stored_rows

    created = upload_multipart(client, SAMPLE, **PRODUCT_OPTIONS).json()
    submission = created["id"]
    drain(model=fake_embedder)

    hits = client.get("/search", params={"q": "Tideway USB-C Charger", "k": 3, "where": "category=Electronics"}).json()
    assert hits == [hit.__dict__ for hit in api.search("Tideway USB-C Charger", 3, where={"category": "Electronics"})]
    assert hits[0]["id"] == "000001" and hits[0]["distance"] < 1e-5
    assert client.get("/search", params={"q": "x", "collection": "nope"}).status_code == 400

    stored = {row[1]: row[-1] for row in stored_rows(env)}
    response = client.get(f"/submissions/{submission}/export", params={"format": "jsonl"})
    assert response.headers["content-type"] == "application/x-ndjson"
    records = [json.loads(line) for line in response.text.splitlines()]
    assert len(records) == 320
    assert all(np.array_equal(np.float32(record["vector"]), stored[record["id"]])
               for record in records)
    response = client.get(f"/submissions/{submission}/export", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert len(list(csv.reader(io.StringIO(response.text)))) == 321
    assert client.get(f"/submissions/{submission}/export", params={"format": "xml"}).json() == {
        "detail": "unknown --format 'xml': use one of jsonl, csv, parquet"}
    parquet = client.get(f"/submissions/{submission}/export", params={"format": "parquet"})
    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 320

    assert client.get(f"/submissions/{submission}/failures").json() == []
    assert client.post(f"/submissions/{submission}/retry", params={"all": "true"}).json() == {
        "requeued": [], "expired": [], "skipped": []}
    deleted = client.delete(f"/submissions/{submission}").json()
    assert deleted == {"id": submission, "rows": 320, "jobs": deleted["jobs"]}
    assert client.get(f"/submissions/{submission}").status_code == 404
    assert client.get(f"/submissions/{submission}/export").status_code == 404


def test_metrics_match_status_and_the_batches_run(client, env, api, drain, fake_embedder):
    from prometheus_client.parser import text_string_to_metric_families

    submission = upload_multipart(client, SAMPLE, **PRODUCT_OPTIONS).json()["id"]
    drain(batch_size=64, model=fake_embedder)
    status = client.get(f"/submissions/{submission}").json()
    families = {family.name: family for family in text_string_to_metric_families(client.get("/metrics").text)}
    assert all(name.startswith("csvembed_") for name in families)

    def value(family: str, sample_name: str, **labels) -> float:
        return next(sample.value for sample in families[family].samples
                    if sample.name == sample_name and sample.labels == labels)

    for figure in ("done", "failed", "skipped"):
        assert value(f"csvembed_rows_{figure}", f"csvembed_rows_{figure}_total", queue=FAKE_QUEUE) == status[figure]
    assert value("csvembed_rows_enqueued", "csvembed_rows_enqueued_total", queue=FAKE_QUEUE) == status["total"]
    assert value("csvembed_queue_rows_waiting", "csvembed_queue_rows_waiting", queue=FAKE_QUEUE) == 0
    assert value("csvembed_submissions", "csvembed_submissions", state="done") == 1
    batches = len(fake_embedder.calls)
    assert batches == 5  # 320 rows in batches of 64
    histogram = "csvembed_batch_duration_seconds"
    assert value(histogram, f"{histogram}_count", queue=FAKE_QUEUE) == batches
    assert value(histogram, f"{histogram}_bucket", queue=FAKE_QUEUE, le="+Inf") == batches


def test_a_token_guards_every_route_but_healthz(api):
    with Served(api, token="s3cret") as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/submissions", "/events", "/metrics", "/openapi.json", "/docs"):
            refused = client.get(path)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert client.get("/submissions", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/submissions", headers={"Authorization": "Bearer s3cret"}).json() == []
        assert client.get("/submissions", params={"token": "s3cret"}).status_code == 200  # EventSource's way
        assert client.get("/submissions", params={"token": "s3cre"}).status_code == 401



def test_a_query_token_beyond_ascii_is_compared_not_a_500(api):
    # parse_qs on the raw query bytes re-encoded an unquoted é as ASCII: ?token=%E9 was a 500 and a traceback.
    with Served(api, token="sécret") as client:
        for wrong in ("%E9%FF", "s%C3%A9cre", "%C3%A9"):
            refused = client.get(f"/submissions?token={wrong}")
            assert (refused.status_code, refused.json()) == (
                401, {"detail": "a valid token is required: send Authorization: Bearer TOKEN"})
        assert client.get("/submissions?token=s%C3%A9cret").json() == []


def test_without_a_token_only_loopback_hosts_and_same_origin_browsers_are_answered(api, env, tmp_path):
    # A web page the user opens could POST rows to a tokenless server (a cross-site form needs no preflight),
    # or read /search and /export once its name is rebound to 127.0.0.1 (DNS rebinding): both were served.
    refusal = {"detail": "refused: without a token this server answers only requests addressed to localhost,"
                         " 127.0.0.1 or [::1], from no other origin (set CSVEMBED_TOKEN to serve others)"}
    path = tmp_path / "hats.csv"
    path.write_text("title\nboots\nhat\n")
    with Served(api) as client:
        port = client.base_url.port
        for host in (f"rebind.example:{port}", "rebind.example", f"127.0.0.1.nip.io:{port}", ""):
            response = client.get("/submissions", headers={"Host": host})
            assert (response.status_code, response.json()) == (403, refusal)
        cross_site = client.post("/submissions", files={"file": ("hats.csv", path.read_bytes(), "text/csv")},
                                 headers={"Origin": "https://evil.example"})
        assert (cross_site.status_code, cross_site.json()) == (403, refusal)
        assert client.post("/submissions", headers={"Origin": "null"}, content=b"title\nhat\n").status_code == 403
        assert queued_keys(env) == []
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LocalHost"):
            assert client.get("/submissions", headers={"Host": host}).json() == []
        same_origin = client.post("/submissions", files={"file": ("hats.csv", path.read_bytes(), "text/csv")},
                                  headers={"Origin": f"http://127.0.0.1:{port}"})
        assert (same_origin.status_code, same_origin.json()["rows"]) == (201, 2)
    with Served(api, token="s3cret") as client:  # the token guards it: any name, e.g. behind a proxy
        assert client.get("/workers", headers={"Host": "csvembed.example", "Authorization": "Bearer s3cret"}
                          ).json() == []

def test_openapi_lists_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {path: sorted(methods) for path, methods in paths.items()} == {
        "/submissions": ["get", "post"],
        "/submissions/{submission_id}": ["delete", "get"],
        "/submissions/{submission_id}/failures": ["get"],
        "/submissions/{submission_id}/retry": ["post"],
        "/submissions/{submission_id}/export": ["get"],
        "/submissions/{submission_id}/events": ["get"],
        "/events": ["get"],
        "/search": ["get"],
        "/workers": ["get"],
        "/healthz": ["get"],
        "/metrics": ["get"],
    }
    assert set(paths["/submissions"]["post"]["requestBody"]["content"]) == {"text/csv", "multipart/form-data"}


def test_serve_refuses_another_host_without_a_token(env, monkeypatch):
    from typer.testing import CliRunner

    from csvembed.cli import app

    monkeypatch.delenv("CSVEMBED_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "csvembed: error: --host 0.0.0.0 can be reached from other machines: set a token first (--token or"
        " CSVEMBED_TOKEN)"]


@contextmanager
def serving(env, *args: str) -> Iterator[tuple[httpx.Client, subprocess.Popen]]:
    """The real `csvembed serve ARGS` in a subprocess (token t0ken), and a client once it answers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "csvembed", "serve", "--port", str(port), *args],
                              env={**env.environ, "CSVEMBED_TOKEN": "t0ken"}, stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer t0ken"},
                          timeout=60) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert client.get("/healthz").json() == {"status": "ok"}
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "csvembed serve did not start"
                    time.sleep(0.1)
            yield client, server
    finally:
        server.terminate()
        assert server.wait(10) in (0, -15)


@pytest.mark.parametrize("flags, status", [((), 422), (("--allow-private-webhooks",), 201)])
def test_serve_takes_private_webhooks_only_when_allowed(env, tmp_path, flags, status):
    path = tmp_path / "rows.csv"
    path.write_text("id,text\n1,a\n")
    with serving(env, *flags) as (client, _):
        response = upload_multipart(client, path, notify="http://127.0.0.1:9000/hook")
    assert response.status_code == status, response.text


@pytest.mark.slow
def test_serve_and_a_real_worker_agree_with_the_cli(env, tmp_path):
    from conftest import run_cli

    rows = list(csv.reader(io.StringIO(SAMPLE.read_text())))[:41]
    small = tmp_path / "products.csv"
    with open(small, "w", newline="") as file:
        csv.writer(file).writerows(rows)
    with serving(env, "--interval", "0.2") as (client, server):
        created = upload_multipart(client, small, **PRODUCT_OPTIONS).json()
        worker = subprocess.Popen([sys.executable, "-m", "csvembed", "worker", "--burst"], env=env.environ)
        with client.stream("GET", f"/submissions/{created['id']}/events") as response:
            events = list(read_events(response))
        assert worker.wait(300) == 0
        assert events[-1][0] == "end"
        final, served = events[-1][1], client.get(f"/submissions/{created['id']}").json()
        cli = json.loads(run_cli(env, "status", created["id"], "--json").stdout)
        # Readings of the moment: times, and the live workers (the burst worker is still registered
        # when the last row's event goes out, and gone once it has exited).
        momentary = {"rate", "elapsed", "eta", "workers"}
        assert {k: v for k, v in final.items() if k not in momentary} == \
               {k: v for k, v in served.items() if k not in momentary} == \
               {k: v for k, v in cli.items() if k not in momentary}
        assert served["workers"] == cli["workers"] == 0
        assert final["state"] == "done" and final["done"] == 40
        hits = client.get("/search", params={"q": rows[1][1], "k": 1}).json()
        assert hits[0]["id"] == rows[1][0]
    assert b"t0ken" not in server.stderr.read()


def test_a_stalled_upload_is_cut_off(api, env):
    def stalling() -> Iterator[bytes]:
        yield b"sku,title\n"
        time.sleep(1.5)
        yield b"1,a\n"

    with Served(api, read_timeout=0.3) as client:
        response = client.post("/submissions", content=stalling(), headers={"Content-Type": "text/csv"})
    assert response.status_code == 408
    assert queued_keys(env) == []


@pytest.mark.parametrize("content_type, head", [
    ("text/csv", b"sku,title\n1,a\n"),
    ("multipart/form-data; boundary=XyZ", b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.csv"'
                                          b"\r\nContent-Type: text/csv\r\n\r\nsku,title\n1,a\n"),
])
def test_a_client_gone_mid_upload_ends_the_request_quietly(api, env, content_type, head):
    """Driven in-process: uvicorn logs "Exception in ASGI application" and a traceback for whatever the app
    raises, so the app must answer (to no one: the server drops what is sent after a disconnect), not raise."""
    from csvembed.web.app import create_app

    arriving = iter([{"type": "http.request", "body": head, "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict] = []

    async def receive() -> dict:
        return next(arriving)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/submissions", "raw_path": b"/submissions",
             "query_string": b"id_column=sku&text_columns=title", "root_path": "",
             "headers": [(b"host", b"localhost"), (b"content-type", content_type.encode()),
                         (b"content-length", b"1000")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(create_app(api)(scope, receive, send))

    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"]) == {"detail": "the client closed the connection before the upload ended:"
                                                     " nothing was queued"}
    assert queued_keys(env) == []


def test_a_gzip_that_expands_past_the_limit_is_413_and_enqueues_nothing(api, env):
    # A few kilobytes of gzip that would be a million bytes of rows: the limit is on what the rows weigh.
    bomb = gzip.compress(b"text\n" + b"x" * 60 + b"\n" * 1_000_000)
    assert len(bomb) < 5_000
    with Served(api, max_upload=100_000) as client:
        for response in (client.post("/submissions", content=bomb, headers={"Content-Type": "text/csv"}),
                         client.post("/submissions", files={"file": ("rows.csv.gz", bomb, "application/gzip")})):
            assert response.status_code == 413
            assert response.json() == {"detail": "the upload decompresses to more than the server's limit of"
                                                 " 100000 bytes (csvembed serve --max-upload)"}
        small = gzip.compress(SAMPLE.read_bytes())  # under the limit once decompressed: accepted
        response = client.post("/submissions", content=small, params=PRODUCT_OPTIONS)
        assert response.status_code == 201 and response.json()["rows"] == 320
        client.delete(response.headers["location"])
    assert queued_keys(env) == []


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_pending_below_one_is_400_not_a_request_that_never_ends(client, env, value):
    response = upload_multipart(client, SAMPLE, max_pending=value, timeout=10)
    assert response.status_code == 400
    assert response.json() == {"detail": f"--max-pending must be 1 or more, not {value}"}
    assert queued_keys(env) == []


@pytest.mark.parametrize("limit", ["0", "100000000000000000000"])
def test_a_list_limit_out_of_range_is_422_not_a_redis_outage(client, limit):
    response = client.get("/submissions", params={"limit": limit})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]


def test_a_search_k_past_a_signed_64_bit_integer_is_refused_not_a_500(client, env, drain, fake_embedder):
    # A `where` search passes k to SQL's LIMIT, a signed 64-bit integer: k=2**63 was an OverflowError, a 500
    # over HTTP and a traceback from the CLI.
    from typer.testing import CliRunner

    from csvembed.cli import app

    assert upload_multipart(client, SAMPLE, **PRODUCT_OPTIONS).status_code == 201
    drain(model=fake_embedder)
    params = {"q": "boot", "where": "category=Footwear"}
    response = client.get("/search", params={**params, "k": str(2**63)})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "k"]
    assert response.json()["detail"][0]["ctx"] == {"le": 2**63 - 1}
    largest = client.get("/search", params={**params, "k": str(2**63 - 1)})
    assert largest.status_code == 200
    assert {hit["row"]["category"] for hit in largest.json()} == {"Footwear"}
    cli = CliRunner().invoke(app, ["search", "boot", "--where", "category=Footwear", "-k", str(2**63)])
    assert cli.exit_code == 2
    assert cli.stderr.splitlines()[-1] == \
        f"Error: Invalid value for '-k': Input should be less than or equal to {2**63 - 1}"
