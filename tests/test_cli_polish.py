"""The CLI reads well (issue 14): hand-written help, Ctrl-C says what goes on, retry leaves permanent
failures, export never dumps binary on a terminal nor goes silently short, the embedded Redis can be
seen and stopped, and a user's own Redis is told once when it would keep rows in the large encoding."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import subprocess
import sys
import time

import apsw
import pyarrow.parquet as pq
import pytest
import redis
from typer.testing import CliRunner

from conftest import FAKE_QUEUE, start_redis, write_csv
from csvembed import defaults
from csvembed.broker import ensure_local_redis, local_socket
from csvembed.cli import app
from csvembed.settings import Settings
from csvembed.store import Store, open_store


def cli(*args: str):
    """The app in process, as the console script runs it: `csvembed ARGS`."""
    return CliRunner().invoke(app, list(args), prog_name="csvembed")


# --- help ---------------------------------------------------------------------------------------

COMMANDS = """\
Commands:
  search    Find the stored rows nearest to a query.
  export    Write a submission's rows and vectors as JSONL, CSV or Parquet.
  delete    Remove a submission or a collection: stored rows, jobs, records.
  submit    Queue one embedding job per CSV row; print the submission id.
  worker    Embed queued rows and store them.
  failures  List the rows of a submission that failed for good, and why.
  retry     Requeue a submission's failed rows that may yet succeed.
  status    Show progress: done, failed, pending, rows/s and ETA.
  list      List the submissions, newest first, with their state.
  workers   List the workers: state, queues, batch size, rows done.
  serve     Serve the HTTP API, live dashboard and metrics.
  redis     Show or stop the embedded Redis server.
  db        Set up the store once, as its owner; print the GRANTs.
"""

SUBMIT_HELP = """\
Usage: csvembed submit [OPTIONS] FILE

  Enqueue one job per CSV row; print the submission id on stdout and return at
  once.

  Rows whose id, text, fields and model are unchanged in the store are skipped
  (see --force). A row with more fields than the header rejects the file;
  missing trailing fields read as "".

Arguments:
  FILE  The CSV file, or - for standard input.

Options:
  --text-column COLUMN            Column to embed (repeatable; joined by
                                  newlines). Without --text-column or
                                  --template, every column is embedded as 'name:
                                  value' lines.
  --template TEXT                 Text to embed, e.g. '{title}: {body}'.
  --id-column COLUMN              Column holding each row's own key. Default:
                                  the row number. A row with an id already in
                                  the collection replaces it; within one file
                                  the later row with an id wins.
  --delimiter CHAR                Field delimiter. Default: sniffed.
  --encoding NAME                 Text encoding. Default: UTF-8, or what a byte-
                                  order mark says (UTF-8-BOM, UTF-16, UTF-32).
  --collection NAME               The dataset the rows belong to. Default: the
                                  file's stem (data for data.csv.gz), or stdin-
                                  ID for standard input.
  --queue NAME                    The RQ queue to put the rows on. A model other
                                  than the default gets its own queue,
                                  NAME@model-hash, which its workers listen on.
                                  [default: csvembed]
  --force                         Re-embed rows even if they are unchanged in
                                  the store.
  --max-pending N                 Pause reading while this many rows wait in the
                                  queue.  [x>=1]
  --long-text window|truncate|fail
                                  Text longer than the model's window (all-
                                  MiniLM-L6-v2: 256 tokens, about 1,200
                                  characters): window (embed all of it in
                                  overlapping windows), truncate (embed its
                                  first window) or fail.  [default: window]
  --window-overlap N              Tokens each window shares with the previous
                                  one (at most half a window).  [default: 32;
                                  x>=0]
  --notify URL                    Once nothing is pending, POST the final status
                                  JSON to this http:// or https:// URL (signed
                                  when the workers have
                                  CSVEMBED_WEBHOOK_SECRET).
  --json                          Print {id, rows, enqueued, skipped, failed,
                                  queue, collection} as JSON.
  --wait                          Then show the live status until every row is
                                  done.
  -h, --help                      Show this message and exit.
"""


def test_the_command_list_has_one_whole_line_per_command():
    result = cli("--help")
    assert result.exit_code == 0
    assert COMMANDS in result.stdout
    assert "  redis     Show or stop the embedded Redis server.\n" in result.stdout
    assert "..." not in result.stdout.split("Commands:")[1]
    assert "  --redis-url URL  " in result.stdout and "  --db PATH|URL  " in result.stdout
    assert "  --model NAME|PATH  " in result.stdout and "  --precision fp32|int8  " in result.stdout


def test_submit_help_reads_like_a_hand_written_tool():
    result = cli("submit", "--help")
    assert (result.exit_code, result.stdout) == (0, SUBMIT_HELP)


@pytest.mark.parametrize(("command", "usage"), [
    ("search", "csvembed search [OPTIONS] QUERY"),
    ("export", "csvembed export [OPTIONS] ID"),
    ("delete", "csvembed delete [OPTIONS] [ID]"),
    ("failures", "csvembed failures [OPTIONS] ID"),
    ("retry", "csvembed retry [OPTIONS] ID"),
    ("status", "csvembed status [OPTIONS] [ID]"),
    ("worker", "csvembed worker [OPTIONS]"),
    ("list", "csvembed list [OPTIONS]"),
    ("redis status", "csvembed redis status [OPTIONS]"),
])
def test_every_command_shows_plain_arguments_and_named_values(command, usage):
    result = cli(*command.split(), "--help")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == f"Usage: {usage}"
    options = result.stdout.split("Options:\n")[1]
    names = [line.split("  ")[1] for line in options.splitlines() if line.startswith("  -")]
    assert not [name for name in names if "<" in name or "/ --no-" in name], names


def test_value_options_are_named_for_what_they_take():
    search, export, worker = cli("search", "-h").stdout, cli("export", "-h").stdout, cli("worker", "-h").stdout
    for line in ("  -k N ", "  --where COLUMN=VALUE ", "  --column COLUMN ", "  --submission ID "):
        assert line in search
    assert "  --format jsonl|csv|parquet " in export and "  -o, --output FILE " in export
    for line in ("  --burst ", "  --queue NAME ", "  --batch-size N ", "  --device auto|cpu|cuda "):
        assert line in worker


def test_export_help_says_parquet_goes_anywhere_but_a_terminal():
    # Only a terminal is refused (test_parquet_is_refused_on_a_terminal_without_output); not "to a file: -o".
    shown = " ".join(cli("export", "-h").stdout.split())
    assert "list column (anywhere but a terminal: -o, a redirect or a pipe)." in shown


# --- Ctrl-C -------------------------------------------------------------------------------------

GOOD = "sku,title\n001,Boot\n002,Hat\n003,Tent\n"


def test_ctrl_c_while_submitting_says_nothing_was_submitted(env, monkeypatch):
    from csvembed.producer import Producer

    enqueue = Producer._enqueue

    def enqueue_then_ctrl_c(self, *args, **kwargs):
        enqueue(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Producer, "_enqueue", enqueue_then_ctrl_c)
    path = write_csv(env.dir / "gear.csv", GOOD)
    result = cli("submit", str(path))
    # The id was printed as soon as the submission existed; it was then withdrawn whole.
    submission_id = result.stdout.strip()
    assert result.exit_code == 130 and len(submission_id) == 10
    assert result.stderr == f"interrupted: nothing of {path} was submitted (rows already queued were taken back)\n"
    assert env.connection.llen(f"rq:queue:{FAKE_QUEUE}") == 0
    assert env.connection.keys(f"*{submission_id}*") == []


def test_ctrl_c_while_watching_a_submission_says_it_goes_on(env, monkeypatch):
    def ctrl_c(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("csvembed.cli.watch.follow", ctrl_c)
    path = write_csv(env.dir / "gear.csv", GOOD)
    result = cli("submit", str(path), "--wait")
    submission = result.stdout.strip()
    assert result.exit_code == 130
    assert result.stderr.splitlines() == [
        f"submitted 3 rows of {path} to queue csvembed as {submission} (collection gear)",
        f"stopped watching; submission {submission} goes on: its rows stay queued for the workers"
        f" (csvembed status {submission})",
    ]
    assert env.connection.llen("rq:queue:csvembed") == 3


def test_ctrl_c_on_status_says_what_keeps_running(env, submit, monkeypatch):
    submitted = submit(write_csv(env.dir / "gear.csv", GOOD))

    def ctrl_c(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("csvembed.cli.watch._print_lines", ctrl_c)
    result = cli("status", submitted.id)
    assert (result.exit_code, result.stdout, result.stderr) == (
        130, "", "interrupted; rows already queued stay queued and workers go on\n")


# --- retry --------------------------------------------------------------------------------------

class FaultyStoreDouble:
    """Test double: the real store, whose writes of any row always fail with a transient fault (not an outage,
    which the worker waits out)."""

    def __init__(self, real: Store) -> None:
        self.real = real

    def write(self, rows, vectors):
        if rows:
            raise apsw.IOError("disk I/O error")
        return self.real.write(rows, vectors)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture
def two_failures(env, submit, drain, fake_embedder):
    """Row 1 fails for good (empty text); row 2 fails after its retries (a faulty store)."""
    path = write_csv(env.dir / "f.csv", "id,text\nx1,\nx2,an unlucky row\n")
    submitted = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    # One row a batch: a failed store write fails its whole batch, whatever else was wrong with a row.
    drain(batch_size=1, model=fake_embedder, store=FaultyStoreDouble(open_store(env.db)))
    return submitted.id


def test_failures_say_which_are_permanent(two_failures):
    result = cli("failures", two_failures, "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    assert json.loads(result.stdout) == [
        {"row_number": 1, "id": "x1", "reason": "empty text: nothing to embed", "permanent": True},
        {"row_number": 2, "id": "x2", "reason": "IOError: disk I/O error", "permanent": False},
    ]


def test_retry_skips_permanent_failures_and_says_so(env, two_failures):
    result = cli("retry", two_failures, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"requeued": [2], "expired": [], "skipped": [1]}
    assert result.stderr == "requeued 1 failed row; skipped 1 that failed permanently (--all requeues them too)\n"
    assert env.connection.llen(f"rq:queue:{FAKE_QUEUE}") == 1


def test_retry_all_requeues_permanent_failures_too(env, two_failures):
    result = cli("retry", two_failures, "--all")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "requeued 2 failed rows\n")
    assert env.connection.llen(f"rq:queue:{FAKE_QUEUE}") == 2


def test_a_failure_recorded_before_permanent_existed_is_retried(env, two_failures):
    key = f"csvembed:sub:{two_failures}:errors"
    old = json.loads(env.connection.hget(key, 1))
    del old["permanent"]
    env.connection.hset(key, 1, json.dumps(old))
    result = cli("retry", two_failures)
    assert (result.exit_code, result.stderr) == (0, "requeued 2 failed rows\n")


# --- export -------------------------------------------------------------------------------------

@pytest.mark.slow  # a CLI subprocess, for a real terminal on stdout
def test_parquet_is_refused_on_a_terminal_without_output(env, submit, drain, fake_embedder):
    submitted = submit(write_csv(env.dir / "gear.csv", GOOD), model=fake_embedder.name)
    drain(model=fake_embedder)
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "csvembed", "export", submitted.id, "--format", "parquet"],
                              stdout=terminal, stderr=subprocess.PIPE, env=env.environ, timeout=60)
        os.set_blocking(controller, False)
        try:
            shown = os.read(controller, 4096)
        except BlockingIOError:
            shown = b""
    finally:
        os.close(controller)
        os.close(terminal)
    assert (done.returncode, shown) == (2, b"")
    assert done.stderr == b"csvembed: error: parquet is binary: write it to a file with -o FILE, or pipe it\n"


@pytest.fixture
def resubmitted(env, submit, drain, fake_embedder):
    """gear.csv stored, then submitted again unchanged: the second submission skips every row."""
    path = write_csv(env.dir / "gear.csv", GOOD)
    first = submit(path, model=fake_embedder.name, id_column="sku")
    drain(model=fake_embedder)
    second = submit(path, model=fake_embedder.name, id_column="sku")
    return first.id, second.id


def test_an_all_skipped_export_says_where_the_rows_are(env, resubmitted):
    first, second = resubmitted
    target = env.dir / "out.csv"
    result = cli("export", second, "--format", "csv", "-o", str(target))
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == (f"exported 0 rows to {target}; 3 rows skipped as unchanged: export the earlier"
                             f" submission that stored them ({first}), or submit with --force\n")
    assert target.read_bytes() == b"sku,title," + ",".join(f"embedding_{i}" for i in range(16)).encode() + b"\r\n"


def test_an_all_skipped_parquet_export_is_a_valid_empty_file(env, resubmitted):
    target = env.dir / "out.parquet"
    result = cli("export", resubmitted[1], "--format", "parquet", "-o", str(target))
    assert result.exit_code == 0
    table = pq.read_table(target)
    assert (table.num_rows, table.column_names) == (0, ["sku", "title", "embedding"])


def test_a_short_export_names_every_missing_row(env, submit, drain, fake_embedder):
    options = {"model": fake_embedder.name, "id_column": "sku", "text_columns": ("title",)}
    first = submit(write_csv(env.dir / "gear.csv", GOOD), **options)
    drain(model=fake_embedder)
    changed = "sku,title\n001,Boot\n002,Cap\n003,Tent\n004,\n005,Rope\n"
    second = submit(write_csv(env.dir / "gear.csv", changed), **options)
    drain(model=fake_embedder)
    result = cli("export", first.id, "-o", str(env.dir / "first.jsonl"))
    assert result.stderr == f"exported 2 rows to {env.dir / 'first.jsonl'}; 1 since replaced by a later submission\n"
    result = cli("export", second.id, "-o", str(env.dir / "second.jsonl"))
    assert result.stderr == (
        f"exported 2 rows to {env.dir / 'second.jsonl'}; 2 rows skipped as unchanged: export the earlier submission"
        f" that stored them ({first.id}), or submit with --force; 1 failed (csvembed failures {second.id})\n")


# --- the embedded Redis -------------------------------------------------------------------------

@pytest.fixture
def embedded(env, monkeypatch, tmp_path):
    """No Redis URL: the embedded server in a short home (unix socket paths are limited to ~100 bytes)."""
    monkeypatch.delenv("CSVEMBED_REDIS_URL")
    home = tmp_path / "h"
    monkeypatch.setenv("CSVEMBED_HOME", str(home))
    yield home
    from csvembed.broker import stop_local_redis

    stop_local_redis(Settings(home=home, db="", model="", redis_url=None))


def test_redis_status_and_stop_find_the_embedded_server(embedded):
    stopped = cli("redis", "status")
    assert (stopped.exit_code, stopped.stdout) == (3, f"not running; data in {embedded / 'redis'} (0.0 MB on disk)\n")
    assert not (embedded / "redis").exists()  # status never starts it

    (embedded / "redis").mkdir(parents=True)
    (embedded / "redis" / "dump.rdb").write_bytes(b"an older version's snapshot")
    connection = ensure_local_redis(embedded / "redis")
    pid = int((embedded / "redis" / "redis.pid").read_text())
    running = cli("redis", "status", "--json")
    assert (running.exit_code, running.stderr) == (0, "")
    shown = json.loads(running.stdout)
    assert {key: shown[key] for key in ("running", "pid", "version", "socket")} == {
        "running": True, "pid": pid, "version": "6.2.14", "socket": str(local_socket(embedded / "redis"))}
    assert connection.config_get("save") == {"save": ""}  # the AOF alone
    while connection.info("persistence")["aof_rewrite_in_progress"]:
        time.sleep(0.05)
    assert connection.info("persistence")["aof_last_rewrite_time_sec"] >= 0  # compacted as it started
    assert connection.config_get("auto-aof-rewrite-min-size") == {"auto-aof-rewrite-min-size": str(4 * 1024 * 1024)}

    result = cli("redis", "stop")
    assert (result.exit_code, result.stdout, result.stderr) == (
        0, "", f"stopped the embedded Redis (pid {pid}); its data stays in {embedded / 'redis'}\n")
    with pytest.raises(redis.ConnectionError):
        connection.ping()
    assert sorted(path.name for path in (embedded / "redis").iterdir()) == [
        "appendonly.aof", "redis.log", "start.lock"]  # no RDB snapshot, and the old one is gone
    again = cli("redis", "stop")
    assert (again.exit_code, again.stderr) == (0, "the embedded Redis is not running\n")


def test_a_home_that_cannot_hold_the_embedded_redis_is_one_line(embedded):
    embedded.write_text("a file, not a folder")
    result = cli("status")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "", (
        f"csvembed: error: cannot keep the embedded Redis in {embedded / 'redis'}: {embedded / 'redis'}: Not a"
        " directory (check CSVEMBED_HOME, or pass --redis-url)\n"))


def test_a_home_too_deep_for_a_unix_socket_is_refused_before_any_server_starts(embedded, monkeypatch):
    deep = embedded / ("d" * 60) / ("e" * 60)
    monkeypatch.setenv("CSVEMBED_HOME", str(deep))
    socket_path = deep / "redis" / "redis.sock"
    result = cli("status")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "", (
        f"csvembed: error: the embedded Redis cannot listen at {socket_path}: a unix socket path is at most 107"
        f" bytes, this one is {len(str(socket_path))}; set a shorter CSVEMBED_HOME, or pass --redis-url\n"))
    assert not embedded.exists()  # no server was started, listening at a path cut short


def test_an_embedded_redis_that_will_not_start_is_one_line_with_its_log(embedded, monkeypatch):
    (embedded / "redis").mkdir(parents=True)
    (embedded / "redis" / "appendonly.aof").write_bytes(b"*3\r\n$3\r\nSET\r\ncut short\n")  # a corrupt AOF
    monkeypatch.setattr(defaults, "LOCAL_REDIS_START_TIMEOUT", 1.0)
    result = cli("status")
    assert (result.exit_code, result.stdout) == (3, "")
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("csvembed: error: the embedded redis-server did not start (")
    assert result.stderr.endswith("Bad file format reading the append only file: make a backup of your AOF file,"
                                  " then use ./redis-check-aof --fix <filename>\n")


def test_redis_stop_leaves_a_users_own_redis_alone(env):
    result = cli("--redis-url", "redis://user:hunter2@127.0.0.1:1/0", "redis", "stop")
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", (
        "csvembed: error: --redis-url (or CSVEMBED_REDIS_URL) names your own Redis, redis://user:***@127.0.0.1:1/0:"
        " csvembed stops only its embedded one\n"))


# --- a user's own Redis -------------------------------------------------------------------------

NOTE = ("note: this Redis stores queued rows over 64 bytes in the large hash encoding (hash-max-ziplist-value 64),"
        " about 2,170 B a row instead of about 640 B; to keep them compact, run: redis-cli CONFIG SET"
        " hash-max-ziplist-value 8192 (Redis 6.2 and 7)")


@pytest.fixture
def stock_redis(env, tmp_path):
    """A user's Redis with the stock hash-max-ziplist-value (64)."""
    process, url = start_redis(tmp_path, "--appendonly", "no")
    yield url
    process.terminate()
    process.wait(10)


def test_submit_says_once_that_a_stock_redis_keeps_rows_large(env, stock_redis):
    path = write_csv(env.dir / "gear.csv", GOOD)
    result = cli("--redis-url", stock_redis, "submit", str(path))
    assert result.exit_code == 0
    assert result.stderr.splitlines()[0] == NOTE and result.stderr.count("note:") == 1
    compact = cli("submit", str(path))  # the suite's Redis follows the advice
    assert (compact.exit_code, compact.stderr.count("note:")) == (0, 0)


def test_a_worker_says_it_once_as_it_connects(env, stock_redis, caplog):
    from csvembed.broker import connect

    with caplog.at_level(logging.WARNING, logger="csvembed.broker"):
        connect(Settings(home=env.home, db=env.db, model="", redis_url=stock_redis), wait_forever=True)
        connect(Settings(home=env.home, db=env.db, model="", redis_url=stock_redis))  # not a worker: silent
    assert [record.getMessage() for record in caplog.records] == [NOTE]


def test_delete_counts_in_words_that_agree_with_the_number(env, submit, drain, fake_embedder):
    path = write_csv(env.dir / "one.csv", "id,text\na,alpha\n")
    submitted = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    drain(model=fake_embedder)
    result = cli("delete", submitted.id)
    assert (result.exit_code, result.stderr) == (
        0, f"deleted submission {submitted.id}: 1 stored row and their vectors, 0 queued or failed jobs,"
        " and its progress records\n")


# --- control characters from the data ----------------------------------------------------------------

def test_control_characters_in_ids_are_shown_escaped_never_sent(env, submit, drain, fake_embedder):
    # Ids, fields and reasons come from files anyone may have written: an escape sequence in an id cleared
    # the screen of whoever ran `failures`, `search` or watched `status`.
    path = write_csv(env.dir / "f.csv", "id,text\n\"A\x1b[2J\rX\",\n")
    submitted = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    drain(model=fake_embedder)
    result = cli("failures", submitted.id)
    # (rich drops a carriage return itself.)
    assert (result.exit_code, result.stdout) == (0, "row 1   id A\\x1b[2JX        empty text: nothing to embed\n")

    from csvembed.api import Csvembed
    from csvembed.cli.app import Terminal
    from csvembed.cli.status_view import render

    live = Terminal(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    reading = Csvembed(env.settings, env.connection).reading([submitted.id])
    live.print(render(reading, time.time(), {submitted.id: [{"row_number": 1, "id": "A\x1b[2J\rX",
                                                              "reason": "empty text"}]}, 120))
    shown = live.file.getvalue()
    assert f"{submitted.id} row 1 (id A\\x1b[2JX): empty text" in shown
    assert "\x1b[2J" not in shown and "\r" not in shown


def test_json_output_of_control_characters_in_ids_is_still_json(env, submit, drain, fake_embedder):
    # DEL and the C1 controls (U+009B is a terminal's CSI) pass json.dumps raw; Terminal showed them as \x9b,
    # which no JSON parser reads: `failures --json` must give scripts the id as it was stored.
    path = write_csv(env.dir / "f.csv", "id,text\n\"A\x9b2J\x7fX\",\n")
    submitted = submit(path, model=fake_embedder.name, id_column="id", text_columns=("text",))
    drain(model=fake_embedder)
    result = cli("failures", submitted.id, "--json")
    assert result.exit_code == 0
    assert [row["id"] for row in json.loads(result.stdout)] == ["A\x9b2J\x7fX"]
    assert "\x9b" not in result.stdout and "\x7f" not in result.stdout
