"""`csvembed submit` starts fast (issue 11): it imports only what it uses, and typer's pydantic checks are
skipped for values that are already what they would return, while every other value gets typer's own
check and error. What the commands print stays text: a file name is never read as an emoji code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import write_csv
from csvembed.cli import app
from csvembed.submissions import SubmissionRecords

GOOD = "sku,title,body\n001,Boot,Waterproof leather boot\n002,Hat,Wool hat\n003,Tent,Two person tent\n"

# What a submit of a CSV never uses: the model and its runtimes, the web server, typer's pydantic checks,
# and the watching side (live views, bars, tables, the monitor, webhooks).
NOT_FOR_SUBMIT = (
    "torch", "sentence_transformers", "transformers", "onnxruntime", "fastapi", "starlette", "uvicorn",
    "pydantic", "rich.progress", "rich.live", "rich.table", "csvembed.cli.status_view",
    "csvembed.monitor", "csvembed.figures", "csvembed.webhooks", "csvembed.worker", "csvembed.embedder",
    "csvembed.web",
)

# The console script's main() in a fresh interpreter, reporting at exit which of the modules it loaded.
SUBMIT_THEN_REPORT = """
import atexit, json, sys
names, report = json.loads(sys.argv[1]), sys.argv[2]
atexit.register(lambda: open(report, "w").write(json.dumps(sorted(n for n in names if n in sys.modules))))
sys.argv = ["csvembed", *sys.argv[3:]]
from csvembed.cli import main
main()
"""


def cli(*args: str):
    return CliRunner().invoke(app, list(args), prog_name="csvembed")


@pytest.mark.slow  # a fresh interpreter: in process, the suite has imported everything already
def test_submit_imports_nothing_it_does_not_use(env):
    path = write_csv(env.dir / "gear.csv", GOOD)
    loaded = env.dir / "loaded.json"
    done = subprocess.run([sys.executable, "-c", SUBMIT_THEN_REPORT, json.dumps(NOT_FOR_SUBMIT), str(loaded),
                           "submit", str(path), "--text-column", "body", "--id-column", "sku"],
                          capture_output=True, env=env.environ, timeout=120)
    assert done.returncode == 0, done.stderr
    submission_id = done.stdout.decode().strip()
    assert SubmissionRecords(env.connection).snapshot(submission_id).total == 3
    assert json.loads(loaded.read_text()) == []


@pytest.mark.parametrize(("args", "usage", "error"), [
    (["worker", "--batch-size", "abc"], "csvembed worker [OPTIONS]",
     "Invalid value for '--batch-size': Input should be a valid integer, unable to parse string as an integer"),
    (["submit", "f.csv", "--window-overlap", "-1"], "csvembed submit [OPTIONS] FILE",
     "Invalid value for '--window-overlap': Input should be greater than or equal to 0"),
    (["submit", "f.csv", "--max-pending", "1.5"], "csvembed submit [OPTIONS] FILE",
     "Invalid value for '--max-pending': Input should be a valid integer, unable to parse string as an integer"),
])
def test_a_value_typer_refuses_gets_its_own_error(args, usage, error):
    result = cli(*args)
    command = args[0]
    expected = f"Usage: {usage}\nTry 'csvembed {command} --help' for help.\n\nError: {error}\n"
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", expected)


def test_repeated_and_numeric_values_reach_the_command_as_typed(env):
    path = write_csv(env.dir / "gear.csv", GOOD)
    result = cli("submit", str(path), "--text-column", "title", "--text-column", "body", "--max-pending", "10",
                 "--window-overlap", "16", "--json")
    assert result.exit_code == 0, result.stderr
    snapshot = SubmissionRecords(env.connection).snapshot(json.loads(result.stdout)["id"])
    assert (snapshot.total, snapshot.text, snapshot.window_overlap) == (3, "columns title, body", 16)


def test_a_file_name_with_colons_is_shown_as_it_is(env):
    path = write_csv(env.dir / "gear:thumbs_up:.csv", GOOD)
    result = cli("submit", str(path), "--collection", "gear", "--json")
    assert result.exit_code == 0, result.stderr
    submitted = json.loads(result.stdout)
    assert result.stderr == (f"submitted 3 rows of {path} to queue {submitted['queue']} as"
                             f" {submitted['id']} (collection gear)\n")
