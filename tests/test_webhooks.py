"""Webhooks (--notify): exactly one signed POST per finished submission, delivered with a lease and backoff
to a real HTTP server in the test."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_web import Served, free_port, queued_keys, upload_multipart
from typer.testing import CliRunner

from conftest import FAKE_QUEUE, write_csv
from csvembed.api import Csvembed
from csvembed.cli import app
from csvembed.cli.status_view import notify_line
from csvembed.ingest import Ingestor
from csvembed.redact import mask_url
from csvembed.store import open_store
from csvembed.submissions import NOTIFY_DUE_KEY, SubmissionRecords, record_key
from csvembed.webhooks import ENV_SECRET, Deliverer, is_public, post
from csvembed.worker import BatchWorker

MODEL = "test-hash-embedder"


@dataclass
class Hooks:
    """A real HTTP server on loopback: records every request; answers each path from a script, then 200."""

    server: ThreadingHTTPServer
    requests: list[dict] = field(default_factory=list)
    answers: dict[str, list[int]] = field(default_factory=dict)  # path -> statuses of its first requests
    release: threading.Event = field(default_factory=threading.Event)  # ends a /hang request

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.server.server_address[1]}{path}"

    def to(self, path: str) -> list[dict]:
        return [request for request in self.requests if request["path"] == path]


@pytest.fixture
def hooks():
    found: Hooks

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            found.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if self.path == "/hang" and len(found.to("/hang")) == 1:
                found.release.wait(60)  # the first deliverer is killed meanwhile
            script = found.answers.get(self.path, [])
            status = script.pop(0) if script else 200
            self.send_response(status)
            if status == 302:
                self.send_header("Location", found.url("/ok"))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found = Hooks(server)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield found
    found.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_secret(monkeypatch):
    monkeypatch.delenv(ENV_SECRET, raising=False)


def rows_file(env, count: int, name: str = "rows.csv", empty: tuple[int, ...] = ()):
    return write_csv(env.dir / name, "id,text\n" + "".join(
        f"r{i},{'' if i in empty else f'row number {i}'}\n" for i in range(1, count + 1)))


def deliverer(env, **settings) -> Deliverer:
    return Deliverer(env.connection, **{"backoff": 0.2, "poll_interval": 0.05, **settings})


def status_json(env, submission_id: str) -> dict:
    return Csvembed(env.settings, env.connection).status(submission_id).as_json()


def test_exactly_one_post_after_two_workers_share_the_rows(env, submit, fake_embedder, hooks):
    # Row 7 fails for good (empty text), so the last outcome may be a failure as well as a success.
    result = submit(rows_file(env, 300, empty=(7,)), model=MODEL, id_column="id", text_columns=("text",),
                    notify=hooks.url("/ok"))
    stores = [open_store(env.db), open_store(env.db)]
    workers = [BatchWorker([FAKE_QUEUE], ingestor=Ingestor(fake_embedder, store, SubmissionRecords(env.connection)),
                           batch_size=16) for store in stores]
    while env.connection.llen(f"rq:queue:{FAKE_QUEUE}"):  # the two workers take turns, two batches each
        for worker in workers:
            worker.work(burst=True, max_jobs=2, logging_level="WARNING")
    for store in stores:
        store.close()
    for _ in range(3):  # several deliverers, several passes: still one POST
        deliverer(env).run_once()

    assert len(hooks.requests) == 1
    request, final = hooks.requests[0], status_json(env, result.id)
    body = json.loads(request["body"])
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-Csvembed-Submission"] == result.id
    assert request["headers"]["X-Csvembed-Delivery"] == f"{result.id}.1"
    assert "X-Csvembed-Signature" not in request["headers"]  # no secret, no signature
    assert body.keys() == final.keys()
    for key in ("id", "state", "total", "done", "failed", "skipped", "pending", "collection", "notify"):
        assert body[key] == final[key]
    assert (final["state"], final["done"], final["failed"], final["pending"]) == ("partial", 299, 1, 0)
    assert final["notify_attempts"] == 1 and final["notified_at"] and final["notify_error"] is None
    assert env.connection.zcard(NOTIFY_DUE_KEY) == 0


def test_a_secret_signs_the_raw_body(env, submit, drain, fake_embedder, hooks):
    result = submit(rows_file(env, 5), model=MODEL, notify=hooks.url("/ok"))
    drain(model=fake_embedder)
    deliverer(env, secret="s3cret").run_once()

    [request] = hooks.requests
    expected = "sha256=" + hmac.new(b"s3cret", request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["X-Csvembed-Signature"], expected)
    assert json.loads(request["body"])["id"] == result.id


def test_a_failed_delivery_is_retried_after_its_backoff(env, submit, drain, fake_embedder, hooks):
    hooks.answers["/flaky"] = [500]
    result = submit(rows_file(env, 5), model=MODEL, notify=hooks.url("/flaky"))
    drain(model=fake_embedder)
    hooks_deliverer = deliverer(env, backoff=0.5)
    assert hooks_deliverer.run_once() == 1
    failed = status_json(env, result.id)
    assert (failed["notify_state"], failed["notify_error"], failed["notify_attempts"]) == ("due", "HTTP 500", 1)
    assert failed["notified_at"] is None
    line = notify_line(Csvembed(env.settings, env.connection).snapshot(result.id), time.time())
    assert line.startswith(f"{result.id} notify failed 1 time: HTTP 500; next try in ")
    assert hooks_deliverer.run_once() == 0  # not before its backoff

    time.sleep(0.6)
    assert hooks_deliverer.run_once() == 1
    final = status_json(env, result.id)
    assert [request["headers"]["X-Csvembed-Delivery"] for request in hooks.requests] == [f"{result.id}.1"] * 2
    assert (final["notify_state"], final["notify_attempts"], final["notify_error"]) == ("delivered", 2, None)
    assert final["notified_at"] is not None
    shown = CliRunner().invoke(app, ["status", result.id], prog_name="csvembed").output
    assert f"{result.id} notified {hooks.url('/flaky')} at " in shown


def test_redirects_are_not_followed(env, submit, drain, fake_embedder, hooks):
    hooks.answers["/moved"] = [302]
    result = submit(rows_file(env, 3), model=MODEL, notify=hooks.url("/moved"))
    drain(model=fake_embedder)
    deliverer(env).run_once()

    assert [request["path"] for request in hooks.requests] == ["/moved"]
    assert status_json(env, result.id)["notify_error"] == "HTTP 302 (redirects are not followed)"


def test_gives_up_and_says_so(env, submit, drain, fake_embedder, hooks):
    hooks.answers["/down"] = [503] * 10
    result = submit(rows_file(env, 3), model=MODEL, notify=hooks.url("/down"))
    drain(model=fake_embedder)
    deliverer(env, give_up=0.1).run_once()

    final = status_json(env, result.id)
    assert (final["notify_state"], final["notify_attempts"], final["notify_error"]) == ("given_up", 1, "HTTP 503")
    assert env.connection.zcard(NOTIFY_DUE_KEY) == 0


def test_credentials_in_the_url_are_masked_and_sent_as_basic_auth(env, submit, drain, fake_embedder, hooks):
    result = submit(rows_file(env, 3), model=MODEL, notify=hooks.url("/ok", userinfo="hook:pa55word@"))
    drain(model=fake_embedder)
    deliverer(env).run_once()

    [request] = hooks.requests
    assert request["headers"]["Authorization"] == "Basic aG9vazpwYTU1d29yZA=="
    assert b"pa55word" not in request["body"]
    shown = status_json(env, result.id)["notify"]
    assert shown == hooks.url("/ok", userinfo="***@")


def test_a_token_in_the_url_query_is_sent_but_never_shown(env, submit, drain, fake_embedder, hooks):
    # Webhook receivers often take their secret as ?token=: status, the dashboard and logs showed it.
    result = submit(rows_file(env, 3), model=MODEL, notify=hooks.url("/ok?token=t0ken-XYZ&channel=ops"))
    drain(model=fake_embedder)
    deliverer(env).run_once()

    [request] = hooks.requests
    assert request["path"] == "/ok?token=t0ken-XYZ&channel=ops"
    assert b"t0ken-XYZ" not in request["body"]
    assert status_json(env, result.id)["notify"] == hooks.url("/ok?token=***&channel=***")


def test_a_submission_of_unchanged_rows_notifies_at_submit(env, submit, drain, fake_embedder, hooks):
    path = rows_file(env, 4)
    submit(path, model=MODEL)
    drain(model=fake_embedder)
    running = Csvembed(env.settings, env.connection).deliver_webhooks()  # as a server runs it: a thread
    try:
        again = submit(path, model=MODEL, notify=hooks.url("/ok"))  # every row skipped: finished at once
        deadline = time.monotonic() + 10
        while not hooks.requests:
            assert time.monotonic() < deadline, "never delivered"
            time.sleep(0.05)
    finally:
        running.stop()

    [request] = hooks.requests
    body = json.loads(request["body"])
    assert (body["id"], body["state"], body["skipped"], body["pending"]) == (again.id, "done", 4, 0)


def test_retry_notifies_again_with_a_new_delivery_id(env, submit, drain, fake_embedder, hooks):
    result = submit(rows_file(env, 4, empty=(2,)), model=MODEL, id_column="id", text_columns=("text",),
                    notify=hooks.url("/ok"))
    drain(model=fake_embedder)
    deliverer(env).run_once()
    api = Csvembed(env.settings, env.connection)
    assert api.retry(result.id, include_permanent=True).requeued == [2]
    assert status_json(env, result.id)["notify_state"] == "waiting"
    drain(model=fake_embedder)  # fails again: finished again
    deliverer(env).run_once()

    assert [request["headers"]["X-Csvembed-Delivery"] for request in hooks.requests] == [f"{result.id}.1",
                                                                                         f"{result.id}.2"]


def test_delete_drops_a_pending_notification(env, submit, drain, fake_embedder, hooks):
    result = submit(rows_file(env, 3), model=MODEL, notify=hooks.url("/ok"))
    drain(model=fake_embedder)
    assert env.connection.zcard(NOTIFY_DUE_KEY) == 1
    Csvembed(env.settings, env.connection).delete(result.id)

    assert env.connection.zcard(NOTIFY_DUE_KEY) == 0
    assert deliverer(env).run_once() == 0 and hooks.requests == []


def test_notify_must_be_http(env):
    path = rows_file(env, 2)
    result = CliRunner().invoke(app, ["submit", str(path), "--notify", "ftp://x"], prog_name="csvembed")

    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "csvembed: error: --notify must be an http:// or https:// URL, not 'ftp://x'"]
    assert SubmissionRecords(env.connection).ids() == []


@pytest.mark.parametrize("url", ["http://[::1", "http://hook:pa55word@[::1/"])
def test_a_malformed_notify_url_is_one_line_not_a_traceback(env, url):
    path = rows_file(env, 2)
    result = CliRunner().invoke(app, ["submit", str(path), "--notify", url], prog_name="csvembed")

    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"csvembed: error: --notify must be an http:// or https:// URL, not {mask_url(url)!r}"]
    assert "pa55word" not in result.output
    assert SubmissionRecords(env.connection).ids() == []


@pytest.mark.parametrize("url", ["http://x:99999/", "http://x:0/", "https://x:http/", "http://hook:pa55word@x:70000/"])
def test_a_notify_port_out_of_range_is_refused_at_submit_not_retried_at_delivery(env, fake_embedder, url):
    message = f"--notify must name a port from 1 to 65535, not {mask_url(url)!r}"
    path = rows_file(env, 2)
    result = CliRunner().invoke(app, ["submit", str(path), "--notify", url], prog_name="csvembed")
    with served(env, fake_embedder) as client:
        response = upload_multipart(client, path, notify=url)

    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"csvembed: error: {message}"]
    assert response.status_code == 400
    assert response.json() == {"detail": message}
    assert "pa55word" not in result.output + response.text
    assert SubmissionRecords(env.connection).ids() == [] and queued_keys(env) == []


def test_a_target_that_drips_its_answer_is_cut_off_at_the_timeout():
    # A read timeout restarts at every byte: one byte a tenth of a second would hold the deliverer for ever.
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 1000:
                if stop.wait(0.1):
                    return
                try:
                    connection.send(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    started = time.monotonic()
    error = post(f"http://127.0.0.1:{listener.getsockname()[1]}/", b"{}", {}, timeout=0.5)
    took = time.monotonic() - started
    stop.set()
    thread.join(5)
    listener.close()
    assert error == "no complete answer within 0.5 s"
    assert took < 2


@pytest.mark.slow
def test_a_dead_deliverers_claim_is_delivered_by_another_after_its_lease(env, submit, drain, fake_embedder, hooks):
    result = submit(rows_file(env, 3), model=MODEL, notify=hooks.url("/hang"))
    drain(model=fake_embedder)
    victim = subprocess.Popen([sys.executable, "-c", (
        "import redis, sys; from csvembed.webhooks import Deliverer; "
        "Deliverer(redis.Redis.from_url(sys.argv[1]), lease=2).run_once()"), env.redis_url], env=env.environ)
    try:
        deadline = time.monotonic() + 30
        while not hooks.to("/hang"):  # it has claimed the entry and its POST hangs
            assert time.monotonic() < deadline and victim.poll() is None
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    finally:
        victim.kill()
    survivor = deliverer(env)
    assert survivor.run_once() == 0  # still leased to the dead one
    deadline = time.monotonic() + 10
    while not survivor.run_once():
        assert time.monotonic() < deadline, "the lease never lapsed"
        time.sleep(0.1)

    final = status_json(env, result.id)
    assert len(hooks.to("/hang")) == 2
    assert (final["notify_state"], final["notify_attempts"]) == ("delivered", 2)


# --- SSRF: a submission made over HTTP notifies public addresses only ---------------------------------------

REFUSED = "refused: the webhook's host has no public address (submissions made over HTTP notify public ones only)"


def served(env, fake_embedder, **app_options) -> Served:
    """`csvembed serve` over the test's deployment, under a real uvicorn on loopback."""
    return Served(Csvembed(replace(env.settings, model=fake_embedder.name), connection=env.connection), **app_options)


@pytest.mark.parametrize("address, public", [
    ("10.0.0.1", False), ("172.16.0.1", False), ("192.168.1.1", False), ("127.0.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("255.255.255.255", False),
    ("224.0.0.1", False), ("240.0.0.1", False), ("::1", False), ("::", False), ("fe80::1", False),
    ("fe80::1%lo", False), ("fc00::1", False), ("fd12:3456::1", False), ("fec0::1", False), ("ff02::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("::7f00:1", False), ("64:ff9b::a9fe:a9fe", False),
    ("2002:7f00:1::1", False), ("2001:db8::1", False),
    ("8.8.8.8", True), ("2606:4700::1111", True), ("::ffff:8.8.8.8", True), ("64:ff9b::808:808", True),
])
def test_which_addresses_are_public(address, public):
    assert is_public(address) is public


@pytest.mark.parametrize("host", ["127.1", "2130706433"])  # names only the resolver turns into 127.0.0.1
def test_over_http_a_host_that_resolves_to_loopback_is_never_notified(env, drain, fake_embedder, hooks, host):
    closed = free_port()  # nothing listens there: the same reason, so notify_error cannot probe ports
    with served(env, fake_embedder) as client:
        made = [upload_multipart(client, rows_file(env, 3), collection=f"c{port}",
                                 notify=f"http://{host}:{port}/ok").json()["id"]
                for port in (hooks.server.server_address[1], closed)]
        drain(model=fake_embedder)
        assert deliverer(env).run_once() == 2  # a deliverer elsewhere: it reads the restriction from Redis
        shown = [client.get(f"/submissions/{submission_id}").json() for submission_id in made]

    assert hooks.requests == []
    for submission_id, status in zip(made, shown):
        assert env.connection.hget(record_key(submission_id), "notify_public_only") == b"1"
        assert (status["notify_state"], status["notify_attempts"], status["notify_error"]) == ("given_up", 1, REFUSED)
        line = notify_line(Csvembed(env.settings, env.connection).snapshot(submission_id), time.time())
        assert line == f"{submission_id} notify failed 1 time, gave up: {REFUSED}"
    assert env.connection.zcard(NOTIFY_DUE_KEY) == 0  # given up at once: it would never succeed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1"])
def test_over_http_with_the_opt_in_loopback_is_notified(env, drain, fake_embedder, hooks, host):
    with served(env, fake_embedder, private_webhooks=True) as client:
        response = upload_multipart(client, rows_file(env, 3), notify=f"http://{host}:{hooks.server.server_address[1]}/in")
        assert response.status_code == 201, response.text
        drain(model=fake_embedder)
        deliverer(env).run_once()
        status = client.get(response.headers["location"]).json()

    assert len(hooks.to("/in")) == 1
    assert (status["notify_state"], status["notify_error"]) == ("delivered", None)
    assert env.connection.hget(record_key(status["id"]), "notify_public_only") is None


def test_the_cli_still_notifies_loopback(env, drain, fake_embedder, hooks):
    # A local user has a shell on the host already: nothing to protect from them.
    result = CliRunner().invoke(app, ["--model", MODEL, "submit", str(rows_file(env, 3)), "--notify",
                                      hooks.url("/cli")], prog_name="csvembed")
    assert result.exit_code == 0, result.output
    drain(model=fake_embedder)
    deliverer(env).run_once()

    [request] = hooks.requests
    assert request["path"] == "/cli"
    assert status_json(env, request["headers"]["X-Csvembed-Submission"])["notify_state"] == "delivered"


@pytest.mark.parametrize("url, host", [
    ("http://127.0.0.1:9000/x", "127.0.0.1"), ("http://localhost/x", "localhost"),
    ("http://LocalHost./x", "localhost."), ("http://api.localhost/x", "api.localhost"),
    ("https://10.0.0.1/x", "10.0.0.1"),
    ("http://192.168.1.1/x", "192.168.1.1"), ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("http://[::1]:8080/", "::1"), ("http://[fe80::1]/", "fe80::1"), ("http://[fd00::1]/", "fd00::1"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"), ("http://0.0.0.0/", "0.0.0.0"),
    ("http://user:pa55word@172.16.0.1/", "172.16.0.1"),
])
def test_over_http_a_plainly_private_notify_is_422_and_enqueues_nothing(env, fake_embedder, url, host):
    with served(env, fake_embedder) as client:
        in_query = upload_multipart(client, rows_file(env, 2), notify=url)
        with open(rows_file(env, 2), "rb") as file:
            in_form = client.post("/submissions", files={"file": ("rows.csv", file, "text/csv")}, data={"notify": url})
        raw = client.post("/submissions", content=b"id,text\n1,a\n", params={"notify": url},
                          headers={"Content-Type": "text/csv"})

    for response in (in_query, in_form, raw):
        assert response.status_code == 422
        assert response.json() == {"detail": f"notify: {host} is not a public address, and submissions made over"
                                              " HTTP notify public addresses only"}
    assert queued_keys(env) == []


def test_a_client_cannot_lift_the_restriction(env, fake_embedder):
    with served(env, fake_embedder) as client:
        response = upload_multipart(client, rows_file(env, 2), notify="http://127.1/x", notify_public_only="false")

    assert response.status_code == 400
    assert response.json()["detail"].startswith("unknown option 'notify_public_only'")
    assert queued_keys(env) == []


def test_a_public_only_webhook_never_goes_through_an_environment_proxy(hooks):
    # The proxy (the test's receiver) would connect wherever the URL says, past the address check.
    script = ("from csvembed.webhooks import NotPublic, post\n"
              "try:\n"
              "    print(post('http://8.8.8.8:9/p', b'{}', {}, 0.5, public_only=True) is None)\n"
              "except NotPublic:\n"
              "    print('refused')\n"
              "print(post('http://8.8.8.8:9/p', b'{}', {}, 5))\n")
    proxy = f"http://127.0.0.1:{hooks.server.server_address[1]}"
    environ = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    result = subprocess.run([sys.executable, "-c", script], env={**environ, "http_proxy": proxy},
                            capture_output=True, text=True, timeout=60)

    # Connected directly (this host may not reach 8.8.8.8: a failure, but not a refusal of the proxy's address).
    # The unrestricted one went through the proxy, which answered 200.
    assert result.stdout.splitlines() == ["False", "None"], result.stderr
    assert [request["path"] for request in hooks.requests] == ["http://8.8.8.8:9/p"]
