"""db init: set up a store once, as its owner, so that workers and readers never need to create tables."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from csvembed.cli.app import CsvembedTyper, out, say, settings_of

db_app = CsvembedTyper(
    name="db",
    help="The store's schema: `csvembed db init` once, by the database's owner, before workers and readers "
    "with fewer rights use it.",
    short_help="Set up the store once, as its owner; print the GRANTs.",
    no_args_is_help=True,
)


@db_app.command("init", short_help="Create the store's extension, tables and indexes, and print GRANTs.")
def init(
    ctx: typer.Context,
    db: Annotated[Optional[str], typer.Option(
        "--db", metavar="PATH|URL", help="The store (default: the global --db).")] = None,
    dimension: Annotated[Optional[int], typer.Option(
        metavar="N", min=1, help="The model's vector dimension (default: load the model to find it).")] = None,
    worker_role: Annotated[str, typer.Option(metavar="ROLE", help="The workers' role.")] = "csvembed_worker",
    reader_role: Annotated[str, typer.Option(metavar="ROLE", help="search and export's role.")] = "csvembed_reader",
) -> None:
    """Create the store's schema; on PostgreSQL also print (on stdout) the GRANT statements that let a worker
    role store and delete rows and a reader role search and export, without any right to create tables.

    Every other command only checks that the schema is there. A SQLite store needs no init: the first
    command creates it.
    """
    from csvembed.store import is_postgres_url, open_store

    settings = settings_of(ctx)
    target = db or settings.db
    if not is_postgres_url(target):
        open_store(target).close()
        say(f"store ready at {target}")
        return
    from csvembed.store.postgres import PostgresStore, grants

    if dimension is None:
        from csvembed.embedder import load_embedder

        dimension = load_embedder(settings, may_export=False).dimension
    store = PostgresStore(target)
    try:
        store.create_schema(dimension)
        out.print("\n".join(grants(store.schema, worker_role, reader_role)), highlight=False, markup=False)
    finally:
        store.close()
    say(f"store ready at {store.path} ({dimension} dimensions); run the GRANTs above as its owner")
