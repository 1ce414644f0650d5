"""A submission remembers its store: commands on its rows refuse another --db; a collection can be deleted whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import store_counts, write_csv
from csvembed.cli import app
from csvembed.redact import mask_secrets
from csvembed.store import store_label

BOTH_STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)]


def cli(*args: str):
    return CliRunner().invoke(app, list(args), prog_name="csvembed")


@pytest.fixture
def stored(env, submit, drain, fake_embedder) -> str:
    """Three rows of collection `books`, stored; the submission's id."""
    result = submit(write_csv(env.dir / "books.csv", "text\nalpha\nbeta\ngamma\n"), model=fake_embedder.name)
    drain(model=fake_embedder)
    assert store_counts(env) == (3, 3)
    return result.id


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_delete_and_export_refuse_another_db_and_name_the_right_one(env, stored):
    other = str(env.dir / "other.db")
    right = store_label(env.db)
    assert right == str(Path(env.db).absolute()) or ("@" not in right and right.startswith("postgresql://"))
    for command in (["delete", stored], ["export", stored], ["search", "alpha", "--submission", stored]):
        result = cli("--db", other, *command)
        assert result.exit_code == 2
        assert result.stderr == (f"csvembed: error: submission {stored} stored its rows in {mask_secrets(right)},"
                                 f" not {other}: use --db {mask_secrets(right)}\n")
    assert store_counts(env) == (3, 3)
    assert env.connection.zcard("csvembed:submissions") == 1
    assert cli("delete", stored).exit_code == 0
    assert store_counts(env) == (0, 0)


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_delete_collection_removes_rows_whose_submissions_are_gone(env, stored, submit, drain, fake_embedder):
    submit(write_csv(env.dir / "films.csv", "text\ndelta\n"), model=fake_embedder.name)
    drain(model=fake_embedder)
    env.connection.flushall()  # the books submission's records are gone: only its rows are left
    result = cli("delete", "--collection", "books")
    assert result.exit_code == 0, result.output
    assert result.stderr == "deleted collection books: 3 stored rows and their vectors, 0 submissions\n"
    assert store_counts(env) == (1, 1)
    result = cli("delete", "--collection", "books")
    missing = f"csvembed: error: no collection 'books' in {store_label(env.db)}\n"
    assert (result.exit_code, result.stderr) == (2, missing)
    assert cli("delete").exit_code == 2
