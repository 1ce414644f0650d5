"""Least privilege on PostgreSQL: an owner runs `csvembed db init` once; workers and readers need no DDL right."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import psycopg
import pytest
from test_shared_store import rows_of, unit_vectors
from typer.testing import CliRunner

from conftest import write_csv
from csvembed.api import Csvembed
from csvembed.cli import app
from csvembed.errors import ServiceUnavailable
from csvembed.redact import mask_secrets
from csvembed.store import StoredRow, open_existing_store, open_store
from csvembed.store.postgres import grants

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("env", ["postgres"], indirect=True)]


def as_role(url: str, role: str) -> str:
    """The test database's URL for another role (local connections are trusted by the test server)."""
    return url.replace("postgresql://postgres:@", f"postgresql://{role}@", 1)


@pytest.fixture
def roles(env):
    """A worker and a reader role that may connect and nothing more, until granted."""
    with psycopg.connect(env.db, autocommit=True) as owner:
        for role in ("ce_writer", "ce_reader"):  # roles belong to the server: an earlier test may have made them
            if owner.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                owner.execute(f"CREATE ROLE {role} LOGIN")
    return as_role(env.db, "ce_writer"), as_role(env.db, "ce_reader")


def test_a_role_without_ddl_rights_is_told_to_run_db_init(env, roles):
    writer, _ = roles
    with pytest.raises(ServiceUnavailable) as refused:
        open_store(writer)
    shown = mask_secrets(writer)
    assert str(refused.value) == (f"the store {shown} lacks csvembed's tables and this role may not create them:"
                                  f" run `csvembed db init --db {shown}` first, as the database's owner")


def test_db_init_prints_the_grants_a_worker_and_a_reader_need(env, roles):
    writer, reader = roles
    result = CliRunner().invoke(app, ["db", "init", "--db", env.db, "--dimension", "16", "--worker-role", "ce_writer",
                                      "--reader-role", "ce_reader"], prog_name="csvembed")
    assert result.exit_code == 0, result.output
    tables = ('"public".csvembed_meta, "public".csvembed_rows, "public".csvembed_windows,'
              ' "public".csvembed_deleted_submissions')
    statements = ['GRANT USAGE ON SCHEMA "public" TO "ce_writer", "ce_reader";',
                  f'GRANT SELECT ON {tables} TO "ce_writer", "ce_reader";',
                  'GRANT INSERT, UPDATE, DELETE ON "public".csvembed_rows, "public".csvembed_windows TO "ce_writer";',
                  'GRANT INSERT ON "public".csvembed_deleted_submissions TO "ce_writer";']
    assert result.stdout.splitlines() == statements
    with psycopg.connect(env.db, autocommit=True) as owner:
        for statement in statements:
            owner.execute(statement)

    store = open_store(writer)
    store.write(rows_of("books", "model-a", 3), unit_vectors(3, 16, 1))
    store.write([StoredRow("books", "r0", "s2", 0, "again", "{}", "model-a")], unit_vectors(1, 16, 2))
    assert store.delete_submission("s2") == 1
    store.close()

    store = open_existing_store(reader, read_only=True)
    try:
        stored = unit_vectors(3, 16, 1)
        assert [hit.id for hit in store.search(stored[2], 2, collection="books")] == ["r2", "r1"]
        assert [hit.id for hit in store.search(stored[2], 5, where={"n": "1"})] == ["r1"]
        assert [row_id for row_id, *_ in store.rows_of_submission("s1")] == ["r1", "r2"]
        assert store.models() == {"books": "model-a"}
        with pytest.raises(ServiceUnavailable) as refused:
            store.write(rows_of("books", "model-a", 1, submission="s3"), unit_vectors(1, 16, 3))
        assert str(refused.value) == (f"cannot write to the store {mask_secrets(reader)}: permission denied for"
                                      " table csvembed_rows")
    finally:
        store.close()
    assert store_counts_as(env.db) == (2, 2)


def store_counts_as(url: str) -> tuple[int, int]:
    store = open_store(url)
    try:
        return store.counts()
    finally:
        store.close()


def test_a_worker_role_stores_and_a_reader_role_exports_and_searches_the_same_submission(
        env, roles, submit, drain, fake_embedder):
    """Roles connect with different URLs to one database: a submission made as the worker role is the
    reader's to export and search (its record names the database, not the role)."""
    writer, reader = roles
    owner = Csvembed(replace(env.settings, model=fake_embedder.name))
    owner.init_store(fake_embedder.dimension, "ce_writer", "ce_reader")
    with psycopg.connect(env.db, autocommit=True) as connection:
        for statement in grants("public", "ce_writer", "ce_reader"):
            connection.execute(statement)
    env.db = writer
    result = submit(write_csv(env.dir / "books.csv", "id,text\nb1,red boot\nb2,blue hat\n"), model=fake_embedder.name,
                    id_column="id", text_columns=("text",))
    drain(model=fake_embedder)

    as_reader = Csvembed(replace(env.settings, db=reader, model=fake_embedder.name), env.connection)
    as_reader.query_embedder = fake_embedder
    target = io.BytesIO()
    assert as_reader.export(result.id, "jsonl", target).records == 2
    assert [json.loads(line)["id"] for line in target.getvalue().splitlines()] == ["b1", "b2"]
    assert [hit.id for hit in as_reader.search("blue hat", k=1, submission=result.id)] == ["b2"]
    with pytest.raises(ServiceUnavailable) as refused:  # a reader deletes nothing
        as_reader.delete(result.id)
    assert "permission denied for table" in str(refused.value)


def test_a_worker_role_may_neither_change_the_dimension_nor_take_back_a_tombstone(env, roles):
    """It was granted UPDATE and DELETE on every table: it could re-record the dimension for every user, or
    delete a tombstone so that a deleted submission's queued rows were stored again."""
    writer, _ = roles
    owner = open_store(env.db)
    owner.create_schema(16)
    owner.close()
    with psycopg.connect(env.db, autocommit=True) as connection:
        for statement in grants("public", "ce_writer", "ce_reader"):
            connection.execute(statement)
    store = open_store(writer)
    try:
        store.write(rows_of("books", "model-a", 3), unit_vectors(3, 16, 1))
        assert store.delete_submission("s1") == 3
        store.write(rows_of("films", "model-a", 2, submission="s2"), unit_vectors(2, 16, 2))
        assert store.delete_collection("films") == 2
        store.write(rows_of("books", "model-a", 1), unit_vectors(1, 16, 3))  # a deleted submission stays deleted
        assert store.counts() == (0, 0)
    finally:
        store.close()
    with psycopg.connect(writer, autocommit=True) as connection:
        for statement in ("UPDATE csvembed_meta SET value = '8' WHERE key = 'dimension'",
                          "DELETE FROM csvembed_meta", "DELETE FROM csvembed_deleted_submissions",
                          "UPDATE csvembed_deleted_submissions SET submission = 'other'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                connection.execute(statement)
        assert connection.execute("SELECT value FROM csvembed_meta").fetchall() == [("16",)]
        assert connection.execute("SELECT submission FROM csvembed_deleted_submissions ORDER BY 1").fetchall() == [
            ("s1",), ("s2",)]


def test_db_init_by_an_owner_who_may_not_create_the_extension_says_a_superuser_must(env):
    """pgvector is not a trusted extension: the database's owner, no superuser, was told to run `csvembed db
    init` first, the very command that failed."""
    owner_url = as_role(env.db, "ce_owner")
    with psycopg.connect(env.db, autocommit=True) as superuser:
        if superuser.execute("SELECT 1 FROM pg_roles WHERE rolname = 'ce_owner'").fetchone() is None:
            superuser.execute("CREATE ROLE ce_owner LOGIN")
        superuser.execute(f'ALTER DATABASE "{superuser.info.dbname}" OWNER TO ce_owner')
        superuser.execute("GRANT ALL ON SCHEMA public TO ce_owner")
    init = ["--db", owner_url, "db", "init", "--dimension", "16"]
    result = CliRunner().invoke(app, init, prog_name="csvembed")
    assert (result.exit_code, result.stderr) == (3, (
        f"csvembed: error: the store {mask_secrets(owner_url)} lacks the vector extension (pgvector) and this role"
        " may not create it: a superuser must run `CREATE EXTENSION vector` in that database first\n"))
    with psycopg.connect(env.db, autocommit=True) as superuser:
        superuser.execute("CREATE EXTENSION vector")
    result = CliRunner().invoke(app, init, prog_name="csvembed")
    assert result.exit_code == 0, result.output
    store = open_store(owner_url)
    try:
        assert store.dimension == 16
    finally:
        store.close()
