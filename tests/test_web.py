"""The HTTP API under a real uvicorn on a loopback port, driven with httpx, against the real Redis and store."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

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
    api = Csvembed(env.settings, connection=env.connection)
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
    result = submit(SAMPLE, id_column="sku", text_columns=("title",))
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
    assert final == client.get(f"/submissions/{result.id}").json()
    assert final["state"] == "done" and final["done"] == final["total"] == 320

    with client.stream("GET", "/events") as response:
        name, snapshot = next(read_events(response))
    assert name == "snapshot"
    assert set(snapshot) == {"at", "submissions", "queues", "workers", "failures"}
    assert snapshot["submissions"][0] == final
    assert snapshot["queues"] == [{"name": "csvembed", "waiting": 0, "in_progress": 0, "workers": 0}]
