"""Issue #9: no password on screen or in logs, private files at rest, and only csvembed's own jobs run."""

from __future__ import annotations

import logging
import stat
import subprocess
import time
from pathlib import Path

import pytest
import redis
from rq import Callback, Queue, Retry
from rq.executions import Execution
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from conftest import FAKE_QUEUE, run_cli, stored_rows, write_csv
from csvembed import defaults
from csvembed.broker import connect, ensure_local_redis, redis_server_binary, stop_local_redis
from csvembed.errors import ServiceUnavailable
from csvembed.jobs import MALFORMED, NOT_OURS, ROW_FAILED, SERIALIZER, RowTask
from csvembed.settings import Settings
from csvembed.store.postgres import PostgresStore
from csvembed.submissions import SubmissionRecords
from csvembed.tasks import CsvembedJob

PASSWORD = "s3cret-P@ss"  # an unescaped @ too, as people type them

# Ids of the jobs whose foreign failure callback was called: it must stay empty.
CALLED: list[str] = []


def record_call(job: Job, *_) -> None:
    """A foreign on_failure callback: if a csvembed worker ever calls it, the tests see it."""
    CALLED.append(job.id)


@pytest.fixture
def protected_redis(tmp_path):
    """A real redis-server that requires PASSWORD, on a unix socket; yields (process, socket path)."""
    socket_path = tmp_path / "protected.sock"
    process = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--unixsocket", str(socket_path), "--dir", str(tmp_path),
         "--save", "", "--appendonly", "no", "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(unix_socket_path=str(socket_path), password=PASSWORD).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "the protected redis-server did not start"
            time.sleep(0.05)
    yield process, socket_path
    process.terminate()
    process.wait(10)


def settings_for(tmp_path: Path, redis_url: str) -> Settings:
    return Settings(home=tmp_path / "home", db=str(tmp_path / "store.db"), model="", redis_url=redis_url)


# --- secrets ----------------------------------------------------------------------------------

def test_a_redis_password_never_shows_in_errors(tmp_path, protected_redis):
    _, socket_path = protected_redis
    cases = {
        f"unix://:wrong-{PASSWORD}@{socket_path}":
            f"cannot reach Redis at unix://:***@{socket_path}: invalid username-password pair or user is disabled.",
        f"redis://user:{PASSWORD}@127.0.0.1:1/0":
            "cannot reach Redis at redis://user:***@127.0.0.1:1/0: Error 111 connecting to 127.0.0.1:1. "
            "Connection refused.",
        f"redis://:{PASSWORD}@host:notaport/0":
            "invalid Redis URL 'redis://:***@host:notaport/0': Port could not be cast to integer value as 'notaport'",
    }
    for url, expected in cases.items():
        with pytest.raises(ServiceUnavailable) as caught:
            connect(settings_for(tmp_path, url))
        assert str(caught.value) == expected


@pytest.mark.parametrize("query", ["?x=1", "?PASSWORD={pw}", "?password={pw}&timeout=5"])
def test_an_unknown_option_in_a_redis_url_is_one_line_not_a_traceback(tmp_path, query):
    # redis-py takes any query key as a connection argument and fails only at the first command, with a TypeError.
    url = "redis://127.0.0.1:1/0" + query.format(pw=PASSWORD)
    with pytest.raises(ServiceUnavailable) as caught:
        connect(settings_for(tmp_path, url))
    unknown = {"?x=1": "'x'", "?PASSWORD={pw}": "'PASSWORD'", "?password={pw}&timeout=5": "'timeout'"}[query]
    shown = "redis://127.0.0.1:1/0" + {"?x=1": "?x=***", "?PASSWORD={pw}": "?PASSWORD=***",
                                       "?password={pw}&timeout=5": "?password=***&timeout=***"}[query]
    assert str(caught.value) == f"invalid Redis URL {shown!r}: unknown option {unknown}"


@pytest.mark.parametrize(("option", "error"), [
    ("retry=3", "AttributeError: 'str' object has no attribute 'update_supported_errors'"),
    ("parser_class=x", "TypeError: 'str' object is not callable"),
    ("socket_type=x", "TypeError: 'str' object cannot be interpreted as an integer"),
    ("event_dispatcher=x", "AttributeError: 'str' object has no attribute 'dispatch'"),
    ("retry_on_error=x", "TypeError: catching classes that do not inherit from BaseException is not allowed"),
])
def test_an_option_a_url_can_only_give_as_text_is_one_line_not_a_traceback(tmp_path, option, error):
    # redis-py passes these on as strings where it wants objects, and fails at the first command.
    with pytest.raises(ServiceUnavailable) as caught:
        connect(settings_for(tmp_path, f"redis://:{PASSWORD}@127.0.0.1:1/0?{option}"))
    key = option.split("=")[0]
    assert str(caught.value) == (f"invalid Redis URL 'redis://***@127.0.0.1:1/0?{key}=***': an option in it cannot"
                                 f" be given as text ({error})")


@pytest.mark.parametrize("key", ["passwrd", "pasword", "token"])
def test_an_unknown_option_in_a_redis_url_never_shows_its_value(tmp_path, key):
    # A mistyped password key is unknown to redis-py: its value is a password all the same.
    with pytest.raises(ServiceUnavailable) as caught:
        connect(settings_for(tmp_path, f"redis://127.0.0.1:1/0?db=1&{key}={PASSWORD}"))
    assert str(caught.value) == f"invalid Redis URL 'redis://127.0.0.1:1/0?db=***&{key}=***': unknown option {key!r}"


def test_a_connection_class_in_a_redis_url_is_one_line_not_a_traceback(tmp_path):
    # redis-py's pool takes ?connection_class= as its class, a string: the check of the options raised an
    # AttributeError (and the first command a TypeError) with a traceback.
    url = "redis://127.0.0.1:1/0?connection_class=SSLConnection"
    with pytest.raises(ServiceUnavailable) as caught:
        connect(settings_for(tmp_path, url))
    assert str(caught.value) == ("invalid Redis URL 'redis://127.0.0.1:1/0?connection_class=***':"
                                 " unknown option 'connection_class'")


def test_waiting_for_a_protected_redis_logs_no_password(tmp_path, protected_redis, caplog, monkeypatch):
    process, socket_path = protected_redis
    monkeypatch.setattr(defaults, "REDIS_RETRIES", 2)
    monkeypatch.setattr(defaults, "REDIS_RETRY_BASE", 0.01)
    monkeypatch.setattr(defaults, "REDIS_RETRY_CAP", 0.02)
    connection = connect(settings_for(tmp_path, f"unix://:{PASSWORD}@{socket_path}"))
    process.terminate()
    process.wait(10)
    with caplog.at_level(logging.WARNING, logger="csvembed.broker"), pytest.raises(redis.ConnectionError):
        connection.ping()
    line = (f"waiting for Redis at unix://:***@{socket_path}: Error 2 connecting to {socket_path}. "
            "No such file or directory.")
    assert [record.getMessage() for record in caplog.records] == [line] * 3
    assert PASSWORD not in caplog.text


def test_a_postgres_password_never_shows_even_when_libpq_quotes_it(tmp_path):
    cases = {
        "postgresql://user:s3cret@[::1/db":
            "cannot use the store postgresql://user:***@[::1/db: end of string reached when looking for matching "
            '"]" in IPv6 host address in URI: "postgresql://user:***@[::1/db"',
        "postgresql://user:s3cret%zz@127.0.0.1:1/db":
            'cannot use the store postgresql://user:***@127.0.0.1:1/db: invalid percent-encoded token: "***"',
        # A password in the query string: libpq quoted it as written.
        "postgresql://127.0.0.1:1/db?user=u&password=s3cret%zz":
            'cannot use the store postgresql://127.0.0.1:1/db?user=u&password=***: invalid percent-encoded token:'
            ' "***"',
        "postgresql://127.0.0.1:1/db?sslpassword=s3cret%zz":
            'cannot use the store postgresql://127.0.0.1:1/db?sslpassword=***: invalid percent-encoded token: "***"',
    }
    for url, expected in cases.items():
        with pytest.raises(ServiceUnavailable) as caught:
            PostgresStore(url)
        assert str(caught.value) == expected


@pytest.mark.slow
def test_a_command_pointed_at_a_down_redis_prints_no_password(env):
    env.redis_url = f"redis://:{PASSWORD}@127.0.0.1:1/0"
    completed = run_cli(env, "status")
    assert completed.returncode != 0
    stderr = completed.stderr.decode()
    assert PASSWORD not in stderr
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0: Error 111 connecting to 127.0.0.1:1." in stderr


# --- private data at rest ---------------------------------------------------------------------

def modes(folder: Path) -> dict[str, int]:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()}


def test_the_embedded_redis_keeps_its_rows_private(tmp_path):
    home = tmp_path / "home"
    connection = ensure_local_redis(home / "redis")
    try:
        connection.set("row", "private text")
        while connection.info("persistence")["aof_rewrite_in_progress"]:  # the rewrite as it starts
            time.sleep(0.05)
        connection.save()  # the RDB file too
        deadline = time.monotonic() + 5
        while (home / "redis" / "appendonly.aof").stat().st_size == 0:  # everysec fsync
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert stat.S_IMODE((home / "redis").stat().st_mode) == 0o700
        assert modes(home / "redis") == {
            "appendonly.aof": 0o600, "dump.rdb": 0o600, "redis.log": 0o600, "redis.pid": 0o600,
            "start.lock": 0o600, "redis.sock": 0o700,
        }
    finally:
        assert stop_local_redis(Settings(home=home, db="", model="", redis_url=None))


def test_an_existing_open_redis_folder_is_tightened_and_a_chosen_home_kept(tmp_path):
    home = tmp_path / "shared-home"
    (home / "redis").mkdir(parents=True)
    home.chmod(0o755)
    (home / "redis").chmod(0o755)
    ensure_local_redis(home / "redis")
    try:
        assert stat.S_IMODE(home.stat().st_mode) == 0o755
        assert stat.S_IMODE((home / "redis").stat().st_mode) == 0o700
    finally:
        assert stop_local_redis(Settings(home=home, db="", model="", redis_url=None))


# --- foreign jobs -----------------------------------------------------------------------------

def latest_reason(env, job_id: str) -> str:
    return Job.fetch(job_id, connection=env.connection, serializer=SERIALIZER).latest_result().exc_string


def test_foreign_and_malformed_jobs_fail_alone_and_run_nothing(env, submit, drain, fake_embedder, tmp_path):
    CALLED.clear()
    marker = tmp_path / "pwned"
    queue = Queue(FAKE_QUEUE, connection=env.connection, serializer=SERIALIZER)
    foreign = [queue.enqueue("os.system", f"touch {marker}")]
    path = write_csv(env.dir / "p.csv", "id,text\na,first row\nb,second row\nc,third row\n")
    result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    foreign += [
        queue.enqueue("os.system", f"touch {marker}", on_failure=Callback("os.system"), retry=Retry(max=3),
                      failure_ttl=10**9),
        # csvembed's own function, with someone else's callback
        queue.enqueue(RowTask.FUNC, result.id, 9, "x", "text", [], on_failure=Callback("test_security.record_call")),
    ]
    malformed = [
        queue.enqueue(RowTask.FUNC, result.id, "2", "b", "text", [], on_failure=Callback(ROW_FAILED)),
        queue.enqueue(RowTask.FUNC, [result.id], on_failure=Callback(ROW_FAILED)),
    ]
    drain(batch_size=2, model=fake_embedder)

    assert not marker.exists()
    assert CALLED == []
    assert sorted(row_id for _, row_id, *_ in stored_rows(env)) == ["a", "b", "c"]
    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.done, snapshot.failed, snapshot.pending) == (3, 0, 0)
    failed = FailedJobRegistry(FAKE_QUEUE, connection=env.connection, serializer=SERIALIZER)
    assert sorted(failed.get_job_ids()) == sorted(job.id for job in foreign + malformed)
    assert [latest_reason(env, job.id) for job in foreign] == [NOT_OURS] * 3
    assert [latest_reason(env, job.id) for job in malformed] == [MALFORMED] * 2
    for job in foreign + malformed:
        assert 0 < env.connection.ttl(job.key) <= defaults.FAILURE_TTL
    assert (queue.count, env.connection.llen(queue.intermediate_queue_key)) == (0, 0)
    assert StartedJobRegistry(FAKE_QUEUE, connection=env.connection).get_job_ids(cleanup=False) == []


def test_an_abandoned_foreign_job_never_has_its_callback_called(env, drain, fake_embedder, tmp_path):
    CALLED.clear()
    queue = Queue(FAKE_QUEUE, connection=env.connection, serializer=SERIALIZER)
    job = queue.enqueue("os.system", f"touch {tmp_path / 'pwned'}", on_failure=Callback("test_security.record_call"))
    # A worker died holding it: STARTED, in the started registry, its heartbeat long expired.
    queue.remove(job)
    with env.connection.pipeline() as pipe:
        Execution.create(job, defaults.HEARTBEAT_TTL, pipeline=pipe, worker_name="dead-host.1.beef")
        job.prepare_for_execution("dead-host.1.beef", pipeline=pipe)
        pipe.execute()
    started = queue.started_job_registry
    env.connection.zadd(started.key, dict.fromkeys(env.connection.zrange(started.key, 0, -1), 1))

    drain(model=fake_embedder)  # its maintenance runs StartedJobRegistry.cleanup on start

    assert CALLED == []
    assert not (tmp_path / "pwned").exists()
    failed = FailedJobRegistry(FAKE_QUEUE, connection=env.connection, serializer=SERIALIZER)
    assert failed.get_job_ids() == [job.id]


def test_a_csvembed_job_class_refuses_to_run_a_foreign_function(env, tmp_path):
    marker = tmp_path / "pwned"
    queue = Queue(FAKE_QUEUE, connection=env.connection, serializer=SERIALIZER)
    job = queue.enqueue("os.system", f"touch {marker}")
    fetched = CsvembedJob.fetch(job.id, connection=env.connection, serializer=SERIALIZER)
    with pytest.raises(TypeError, match=f"^job {job.id}: {NOT_OURS}$"):
        fetched.perform()
    assert not marker.exists()


def test_a_queued_key_that_is_no_job_at_all_is_dropped_and_the_batch_stored(env, submit, drain, fake_embedder):
    path = write_csv(env.dir / "p.csv", "id,text\na,first row\nb,second row\n")
    result = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    queue = Queue(FAKE_QUEUE, connection=env.connection, serializer=SERIALIZER)
    env.connection.hset("rq:job:junk", "origin", FAKE_QUEUE)  # a hash without the job's data
    env.connection.rpush(queue.key, "junk")  # taken in the same batch as the rows

    drain(batch_size=8, model=fake_embedder)

    assert sorted(row_id for _, row_id, *_ in stored_rows(env)) == ["a", "b"]
    assert SubmissionRecords(env.connection).snapshot(result.id).done == 2
    assert (queue.count, env.connection.llen(queue.intermediate_queue_key)) == (0, 0)
