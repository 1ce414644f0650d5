"""Bad input: one clear line on stderr, a meaningful exit code, no traceback, nothing enqueued."""

from __future__ import annotations

import apsw
import pytest

from conftest import run_cli, write_csv

pytestmark = pytest.mark.slow  # every test runs the CLI in a subprocess

GOOD = "sku,title,body\n001,Boot,Waterproof leather boot\n002,Hat,Wool hat\n"


def assert_rejected(env, result, exit_code: int, message: str, stdout: bytes = b"") -> None:
    stderr = result.stderr.decode()
    assert result.returncode == exit_code, stderr
    assert stderr.count("\n") == 1, stderr  # exactly one line
    assert stderr == f"csvembed: error: {message}\n"
    assert result.stdout == stdout
    assert env.connection.keys("rq:job:*") == []
    assert env.connection.llen("rq:queue:csvembed") == 0
    assert env.connection.zcard("csvembed:submissions") == 0


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, (), "{path}: no such file"),
        ("", (), "{path} is empty: expected a header line and rows"),
        ("sku,title\n", (), "{path} has a header but no rows"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00", (), "{path} contains NUL bytes: it looks like a binary file, not"
         " CSV text (for UTF-16 without a BOM, pass --encoding utf-16-le)"),
        ("sku,title\n001,caf\xe9\n".encode("latin-1"), (),
         "{path} is not valid utf-8 (byte 0xe9 near byte 17): pass --encoding, for example --encoding latin-1"),
        ("a,b\n1,2\n3,4,5\n", (), "{path}: malformed CSV: Expected 2 fields in line 3, saw 3"),
        (GOOD, ("--text-column", "descr"), "unknown --text-column 'descr'; the columns are: sku, title, body"),
        (GOOD, ("--id-column", "id"), "unknown --id-column 'id'; the columns are: sku, title, body"),
        (GOOD, ("--template", "{title}: {bdy}"), "unknown template field 'bdy'; the columns are: sku, title, body"),
        (GOOD, ("--template", "{title:.2f}"),
         "bad --template '{title:.2f}': only plain {column} fields are allowed, without :format, !conversion,"
         " .attribute or [index] (embed a column whose name has . [ : or ! with --text-column)"),
        (GOOD, ("--text-column", "title", "--template", "{body}"), "use either --text-column or --template, not both"),
        (GOOD, ("--queue", ""), "--queue must name a queue, not be empty"),
        (GOOD, ("--queue", " "), "--queue must name a queue, not be empty"),
    ],
)
def test_submit_rejects_bad_input(env, tmp_path, content, args, message):
    path = tmp_path / "input.csv"
    if content is not None:
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    result = run_cli(env, "submit", str(path), *args)
    assert_rejected(env, result, 2, message.replace("{path}", str(path)))


def test_a_worker_refuses_an_empty_queue_name_before_loading_any_model(env):
    assert_rejected(env, run_cli(env, "worker", "--burst", "--queue", "csvembed", "--queue", ""), 2,
                    "--queue must name a queue, not be empty")


def test_a_directory_is_not_a_csv(env, tmp_path):
    assert_rejected(env, run_cli(env, "submit", str(tmp_path)), 2, f"{tmp_path}: is a directory, not a CSV file")


def test_a_rejected_row_late_in_the_file_withdraws_the_rows_already_enqueued(env, tmp_path):
    rows = "".join(f"{i},row {i}\n" for i in range(1, 12_001))  # more than two read chunks
    path = write_csv(tmp_path / "late.csv", "id,text\n" + rows + "12001,bad,extra\n")
    result = run_cli(env, "submit", str(path))
    # The id came out first, before the bad row was read; the submission it names was then withdrawn whole.
    withdrawn = result.stdout.decode().strip()
    assert len(withdrawn) == 10 and env.connection.keys(f"*{withdrawn}*") == []
    assert_rejected(env, result, 2, f"{path}: malformed CSV: Expected 2 fields in line 12002, saw 3",
                    stdout=f"{withdrawn}\n".encode())


def test_unreachable_redis_names_the_url(env, tmp_path):
    path = write_csv(tmp_path / "ok.csv", GOOD)
    result = run_cli(env, "--redis-url", "redis://127.0.0.1:1/0", "submit", str(path))
    stderr = result.stderr.decode()
    assert result.returncode == 3
    assert stderr.startswith("csvembed: error: cannot reach Redis at redis://127.0.0.1:1/0: ")
    assert stderr.count("\n") == 1


def test_a_store_that_is_not_a_csvembed_database(env, tmp_path):
    path = write_csv(tmp_path / "ok.csv", GOOD)
    other = tmp_path / "other.db"
    connection = apsw.Connection(str(other))
    connection.execute("CREATE TABLE invoices(id INTEGER)")
    connection.close()
    result = run_cli(env, "--db", str(other), "submit", str(path))
    assert_rejected(env, result, 3, f"{other} is not a csvembed database (it has other tables)")
    text_file = write_csv(tmp_path / "notes.db", "just some text, not a database at all\n" * 20)
    result = run_cli(env, "--db", str(text_file), "submit", str(path))
    assert_rejected(env, result, 3, f"cannot use the store {text_file}: file is not a database")


def test_an_unwritable_store_path(env, tmp_path):
    path = write_csv(tmp_path / "ok.csv", GOOD)
    blocked = tmp_path / "ok.csv" / "store.db"  # under a regular file: no directory can be made
    result = run_cli(env, "--db", str(blocked), "submit", str(path))
    assert_rejected(env, result, 3, f"cannot use the store {blocked}: {blocked.parent} is not a directory")


def test_a_model_path_that_does_not_exist(env):
    result = run_cli(env, "--model", "/no/such/model", "worker", "--burst")
    assert result.returncode == 2
    assert result.stderr.decode() == "csvembed: error: model path /no/such/model does not exist\n"


def test_status_of_an_unknown_id_exits_2(env):
    for args in (("status", "nope"), ("status", "nope", "--json"), ("status", "nope", "--wait")):
        result = run_cli(env, *args)
        assert result.returncode == 2
        assert result.stderr.decode() == "csvembed: error: no submission with id 'nope'\n"
