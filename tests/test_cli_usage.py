"""The command line's contract, in process through typer's CliRunner (the same app the console script
runs): usage errors, -h, --version, one-line errors with their exit codes, export and search errors,
the store's file modes, and search on a store it may not write."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import STORES, write_csv
from csvembed.cli import app

GOOD = "sku,title,body\n001,Boot,Waterproof leather boot\n002,Hat,Wool hat\n003,Tent,Two person tent\n"
TESTS = Path(__file__).parent


def cli(*args: str):
    """The app in process, as the console script runs it: `csvembed ARGS`."""
    return CliRunner().invoke(app, list(args), prog_name="csvembed")


def usage_error(usage: str, error: str, command: str = "") -> str:
    help_of = f"csvembed {command} --help" if command else "csvembed --help"
    return f"Usage: {usage}\nTry '{help_of}' for help.\n\nError: {error}\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nope"], usage_error("csvembed [OPTIONS] COMMAND [ARGS]...", "No such command 'nope'.")),
        (["--bogus", "list"], usage_error("csvembed [OPTIONS] COMMAND [ARGS]...", "No such option: --bogus")),
        (["search"], usage_error("csvembed search [OPTIONS] QUERY", "Missing argument 'QUERY'.", "search")),
        (["status", "--bogus"], usage_error("csvembed status [OPTIONS] [ID]", "No such option: --bogus", "status")),
        (["search", "boots", "-k", "0"], usage_error(
            "csvembed search [OPTIONS] QUERY",
            "Invalid value for '-k': Input should be greater than or equal to 1", "search")),
        (["worker", "--batch-size", "0"], usage_error(
            "csvembed worker [OPTIONS]",
            "Invalid value for '--batch-size': Input should be greater than or equal to 1", "worker")),
        # It served on a free port while saying http://127.0.0.1:0.
        (["serve", "--port", "0"], usage_error(
            "csvembed serve [OPTIONS]",
            "Invalid value for '--port': Input should be greater than or equal to 1", "serve")),
        (["status", "--redis-url", "redis://elsewhere"], usage_error(
            "csvembed status [OPTIONS] [ID]",
            "No such option: --redis-url (--redis-url is a global option: it goes before the command)", "status")),
        (["list", "redis://user:hunter2@host:6379"], usage_error(
            "csvembed list [OPTIONS]", "Got unexpected extra argument(s) (redis://user:***@host:6379)", "list")),
    ],
)
def test_usage_errors_exit_2_with_the_usage_and_one_error_line(args, expected):
    result = cli(*args)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", expected)


def test_a_list_limit_past_what_redis_counts_is_a_usage_error_not_an_outage(env):
    result = cli("list", "--limit", str(2**63))
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", usage_error(
        "csvembed list [OPTIONS]", "Invalid value for '--limit': Input should be less than or equal to"
        " 9223372036854775807", "list"))


def test_a_batch_size_past_the_cap_is_a_usage_error_not_a_worker_traceback(env):
    result = cli("worker", "--burst", "--batch-size", "65537")
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", usage_error(
        "csvembed worker [OPTIONS]", "Invalid value for '--batch-size': Input should be less than or equal to"
        " 65536", "worker"))


@pytest.mark.parametrize("command", [[], ["submit"], ["search"], ["export"], ["status"], ["worker"]])
def test_dash_h_is_help(command):
    long, short = cli(*command, "--help"), cli(*command, "-h")
    assert (short.exit_code, short.stderr) == (0, "")
    assert short.stdout == long.stdout
    assert short.stdout.startswith(f"Usage: csvembed {' '.join(command)}".rstrip() + " [OPTIONS]")
    assert "  -h, --help " in short.stdout


def test_version():
    result = cli("--version")
    assert (result.exit_code, result.stdout, result.stderr) == (0, f"csvembed {version('csvembed')}\n", "")


def test_a_csvembed_error_is_one_line_with_its_exit_code_in_process(env):
    result = cli("status", "nope")
    expected = (2, "", "csvembed: error: no submission with id 'nope'\n")
    assert (result.exit_code, result.stdout, result.stderr) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # It said only "unknown encoding 'nosuch'".
        (["--encoding", "nosuch"],
         "unknown encoding 'nosuch': pass a Python codec name such as utf-8, latin-1 or cp1252"),
        # An empty one was taken as no --encoding at all.
        (["--encoding", ""], "unknown encoding '': pass a Python codec name such as utf-8, latin-1 or cp1252"),
    ],
)
def test_submit_refuses_a_bad_option_value_in_one_line_enqueuing_nothing(env, args, message):
    path = write_csv(env.dir / "gear.csv", GOOD)
    result = cli("submit", str(path), *args)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"csvembed: error: {message}\n")
    assert env.connection.keys("*") == []


@pytest.mark.parametrize("command", [["submit", "gear.csv"], ["search", "boots"], ["db", "init"]])
def test_a_sqlite_uri_as_db_is_refused_creating_nothing(env, monkeypatch, command):
    # It was taken as a relative path: a folder `file:` holding `x.db?mode=ro`, and the submit went ahead.
    monkeypatch.chdir(env.dir)
    write_csv(env.dir / "gear.csv", GOOD)
    result = cli("--db", "file:x.db?mode=ro", *command)
    expected = (2, "", "csvembed: error: --db (or CSVEMBED_DB) 'file:x.db?mode=ro' is a SQLite URI, which csvembed"
                " does not take: pass the database file's path\n")
    assert (result.exit_code, result.stdout, result.stderr) == expected
    assert sorted(path.name for path in env.dir.iterdir()) == ["gear.csv", "home"]
    assert env.connection.keys("*") == []


def test_an_empty_file_argument_is_refused_naming_it(env):
    # Path("") is the current folder: it said ": is a directory, not a CSV file".
    result = cli("submit", "")
    expected = (2, "", "csvembed: error: FILE must name a CSV file, or - for standard input, not be empty\n")
    assert (result.exit_code, result.stdout, result.stderr) == expected


@pytest.mark.parametrize("options", [[], ["--json"], ["--wait"]])
def test_status_of_an_empty_id_is_an_unknown_id(env, submit, fake_embedder, options):
    # It was taken as no id: every submission listed, exit 0 (--wait: "--wait needs a submission ID").
    submit(write_csv(env.dir / "gear.csv", GOOD), model=fake_embedder.name)
    result = cli("status", "", *options)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", "csvembed: error: no submission with id ''\n")


def test_unreachable_redis_is_exit_3_with_the_password_masked(env):
    result = cli("--redis-url", "redis://user:hunter2@127.0.0.1:1/0", "list")
    assert result.exit_code == 3
    assert result.stderr.startswith("csvembed: error: cannot reach Redis at redis://user:***@127.0.0.1:1/0: ")
    assert result.stderr.count("\n") == 1 and "hunter2" not in result.stderr


def test_ctrl_c_leaves_the_work_and_exits_130(env, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("csvembed.search.search", interrupted)
    result = cli("search", "boots")
    expected = (130, "", "interrupted; rows already queued stay queued and workers go on\n")
    assert (result.exit_code, result.stdout, result.stderr) == expected


# Each sends the process a real SIGINT, as a Ctrl-C right after Enter does: while it imports the CLI's
# libraries, and while typer builds the commands.
CTRL_C_WHILE_STARTING = {
    "importing": """
import builtins, os, runpy, signal
load = builtins.__import__
def interrupting(name, *args, **kwargs):
    if name == "redis":
        os.kill(os.getpid(), signal.SIGINT)
    return load(name, *args, **kwargs)
builtins.__import__ = interrupting
runpy.run_module("csvembed", run_name="__main__")
""",
    "building": """
import os, runpy, signal, typer.main
build = typer.main.get_command
def interrupting(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return build(*args, **kwargs)
typer.main.get_command = interrupting
runpy.run_module("csvembed", run_name="__main__")
""",
}


@pytest.mark.slow
@pytest.mark.parametrize("when", CTRL_C_WHILE_STARTING)
def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130(when):
    # It was a KeyboardInterrupt traceback, and death by SIGINT.
    result = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_STARTING[when], "list"], capture_output=True,
                            text=True, timeout=60)
    expected = (130, "", "interrupted while starting: nothing was done\n")
    assert (result.returncode, result.stdout, result.stderr) == expected


@pytest.fixture
def stored(env, submit, drain, fake_embedder, monkeypatch):
    """Two collections stored with the test double; search embeds its query with the same double."""
    first = submit(write_csv(env.dir / "gear.csv", GOOD), model=fake_embedder.name, id_column="sku",
                   text_columns=("body",), collection="gear")
    drain(model=fake_embedder)
    submit(write_csv(env.dir / "food.csv", "a,b,c\n1,apple,red\n"), model=fake_embedder.name,
           text_columns=("b",), collection="food")
    drain(model=fake_embedder)
    monkeypatch.setattr("csvembed.search.load_embedder", lambda settings, **options: fake_embedder)
    monkeypatch.setenv("CSVEMBED_MODEL", fake_embedder.name)  # search refuses a model other than the rows'
    return first.id


def no_model(settings, **options):
    raise AssertionError("the model was loaded")


def test_search_finds_the_exact_row(stored):
    result = cli("search", "Waterproof leather boot", "-k", "1", "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    [hit] = json.loads(result.stdout)
    assert (hit["id"], hit["collection"], hit["distance"]) == ("001", "gear", pytest.approx(0, abs=1e-6))
    assert hit["row"] == {"sku": "001", "title": "Boot", "body": "Waterproof leather boot"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--where", "nosuchcol=1"],
         "unknown column 'nosuchcol' in --where; the columns are: a, b, body, c, sku, title"),
        (["--collection", "gear", "--where", "a=1"],
         "unknown column 'a' in --where; the columns are: body, sku, title"),
        (["--collection", "nope"], "unknown collection 'nope'; the collections are: food, gear"),
        # --column showed a blank column, exit 0.
        (["--column", "title", "--column", "nosuchcol"],
         "unknown column 'nosuchcol' in --column; the columns are: a, b, body, c, sku, title"),
        (["--collection", "gear", "--column", "a"],
         "unknown column 'a' in --column; the columns are: body, sku, title"),
    ],
)
@pytest.mark.parametrize("env", [pytest.param(store, marks=[pytest.mark.slow] if store == "postgres" else [])
                                 for store in STORES], indirect=True)
def test_search_rejects_an_unknown_column_or_collection_before_loading_the_model(env, stored, monkeypatch, args,
                                                                                  message):
    monkeypatch.setattr("csvembed.search.load_embedder", no_model)
    result = cli("search", "boots", *args)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"csvembed: error: {message}\n")


def test_a_known_column_without_a_matching_value_is_no_match(stored):
    result = cli("search", "boots", "--where", "title=Sandal")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "no stored rows match\n")
    result = cli("search", "Wool hat", "--collection", "gear", "--where", "title=Hat", "--json")
    assert result.exit_code == 0
    assert [hit["id"] for hit in json.loads(result.stdout)] == ["002"]


def test_search_and_export_of_a_missing_store(stored, env, monkeypatch):
    monkeypatch.setattr("csvembed.search.load_embedder", no_model)
    missing = env.dir / "elsewhere" / "none.db"
    result = cli("--db", str(missing), "search", "boots")
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", f"csvembed: error: no store at {missing}: nothing has been stored there yet\n")
    result = cli("--db", str(missing), "export", stored)  # the submission's rows are elsewhere
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", f"csvembed: error: submission {stored} stored its rows in {env.db}, not {missing}: use --db {env.db}\n")
    assert not missing.parent.exists()


def test_export_before_any_row_is_stored(env, submit, fake_embedder):
    submitted = submit(write_csv(env.dir / "gear.csv", GOOD), model=fake_embedder.name)
    result = cli("export", submitted.id)
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", f"csvembed: error: no store at {env.db}: nothing has been stored there yet\n")


def test_export_to_a_directory_a_missing_folder_or_a_full_device(stored, env):
    missing = env.dir / "no" / "such" / "out.jsonl"
    for target, reason in ((env.dir, "is a directory"), (missing, "no such file or directory"),
                           (Path("/dev/full"), "no space left on device")):
        result = cli("export", stored, "-o", str(target))
        assert (result.exit_code, result.stdout, result.stderr) == (
            2, "", f"csvembed: error: cannot write {target}: {reason}\n")
    assert not (env.dir / "no").exists()


def test_a_failed_export_leaves_no_half_written_file(stored, env, monkeypatch):
    def half_then_full(store, submission, columns, fmt, dimension, out, windows=False):
        out.write(b'{"half": ')
        out.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("csvembed.export.export", half_then_full)
    target = env.dir / "out.jsonl"
    result = cli("export", stored, "-o", str(target))
    expected = f"csvembed: error: cannot write {target}: no space left on device\n"
    assert (result.exit_code, result.stderr) == (2, expected)
    assert list(env.dir.glob("*out.jsonl*")) == []  # nor its temporary
    target.write_text("an earlier export\n")
    result = cli("export", stored, "-o", str(target))
    assert (result.exit_code, result.stderr) == (2, expected)
    assert target.read_text() == "an earlier export\n"  # an existing file is left as it was
    assert list(env.dir.glob("*out.jsonl*")) == [target]


@pytest.mark.parametrize("target", ["", " "])
def test_an_empty_export_output_is_refused_naming_the_option(stored, env, monkeypatch, target):
    # -o "" was Path("."): "cannot write .: is a directory"; -o " " wrote a file named " ".
    monkeypatch.chdir(env.dir)
    result = cli("export", stored, "-o", target)
    expected = (2, "", "csvembed: error: --output (-o) must name a file, not be empty\n")
    assert (result.exit_code, result.stdout, result.stderr) == expected
    assert not (env.dir / target).is_file()


def test_export_writes_the_file(stored, env):
    target = env.dir / "out.jsonl"
    result = cli("export", stored, "-o", str(target))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", f"exported 3 rows to {target}\n")
    assert [json.loads(line)["id"] for line in target.read_text().splitlines()] == ["001", "002", "003"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # an export holds what the user stored


def test_the_store_files_are_private(env, drain, submit, fake_embedder):
    from csvembed.store import open_store

    submit(write_csv(env.dir / "gear.csv", GOOD), model=fake_embedder.name)
    old = os.umask(0o022)
    try:
        holder = open_store(env.db)  # keeps the -wal and -shm files while the worker writes
        drain(model=fake_embedder)
        modes = {suffix: stat.S_IMODE(os.stat(env.db + suffix).st_mode) for suffix in ("", "-wal", "-shm")}
        holder.close()
    finally:
        os.umask(old)
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}


# Linux capabilities that let root write whatever the file modes say.
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3
PR_CAPBSET_DROP = 24


def _without_write_override() -> None:
    """In the child before exec: root keeps its uid but loses the capabilities that override file
    modes, so a 0444 file in a 0555 folder is as read-only for it as for anyone."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _as_reader_who_cannot_write(store_dir: Path) -> dict:
    """subprocess options for a reader that cannot write the store's folder or files, checked."""
    for path in store_dir.iterdir():
        path.chmod(0o444)
    store_dir.chmod(0o555)
    extra = {"preexec_fn": _without_write_override} if os.geteuid() == 0 else {}
    try:
        probe = subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'a')", str(store_dir / "probe")],
                               capture_output=True, check=False, **extra)
    except subprocess.SubprocessError as exc:  # the capabilities could not be dropped here
        pytest.skip(f"cannot run a reader that is denied writes: {exc}")
    assert probe.returncode != 0 and b"PermissionError" in probe.stderr, probe.stderr
    return extra


READER = (
    "import sys; from doubles import HashEmbedder; import csvembed.search as s; "
    "s.load_embedder = lambda settings, **options: HashEmbedder(); "
    "from csvembed.cli import main; sys.argv[0] = 'csvembed'; main()"
)


@pytest.mark.slow
@pytest.mark.parametrize("writer_open", [False, True], ids=["closed", "writer-open"])
def test_search_on_a_store_it_may_not_write(env, submit, drain, fake_embedder, writer_open):
    """The real entry point in a subprocess that cannot write the store's folder or files: with the
    store closed (no -wal, no -shm) and while a writer holds it open (rows still in the -wal)."""
    from csvembed.store import open_store

    store_dir = Path(tempfile.mkdtemp(prefix="csvembed-ro-"))
    try:
        db = store_dir / "store.db"
        env.db = str(db)
        submit(write_csv(env.dir / "gear.csv", GOOD), model=fake_embedder.name, id_column="sku",
               text_columns=("body",))
        holder = open_store(str(db)) if writer_open else None
        drain(model=fake_embedder)
        assert Path(f"{db}-wal").exists() == writer_open
        extra = _as_reader_who_cannot_write(store_dir)
        environ = {**env.environ, "CSVEMBED_DB": str(db), "PYTHONPATH": os.pathsep.join(
            [str(TESTS.parent), str(TESTS)]), "PYTHONDONTWRITEBYTECODE": "1"}
        result = subprocess.run([sys.executable, "-c", READER, "--model", fake_embedder.name, "search", "Wool hat",
                                 "-k", "1", "--json"],
                                capture_output=True, env=environ, timeout=120, check=False, **extra)
        assert (result.returncode, result.stderr) == (0, b""), result.stderr
        [hit] = json.loads(result.stdout)
        assert (hit["id"], hit["text"]) == ("002", "Wool hat")
        assert sorted(p.name for p in store_dir.iterdir()) == (
            ["store.db", "store.db-shm", "store.db-wal"] if writer_open else ["store.db"])
        if holder is not None:
            holder.close()
    finally:
        store_dir.chmod(0o755)
        shutil.rmtree(store_dir)


@pytest.mark.slow
def test_the_console_script_gives_the_same_usage_error(env):
    from conftest import run_cli

    result = run_cli(env, "status", "--redis-url", "redis://elsewhere")
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode() == usage_error(
        "csvembed status [OPTIONS] [ID]",
        "No such option: --redis-url (--redis-url is a global option: it goes before the command)", "status")
