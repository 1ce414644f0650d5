"""db init: set up a store once, as its owner, so that workers and readers never need to create tables."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from csvembed.cli.app import CsvembedTyper, api_of, out, say

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
    from dataclasses import replace

    from csvembed.api import Csvembed

    api = Csvembed(replace(api_of(ctx).settings, db=db)) if db else api_of(ctx)
    ready = api.init_store(dimension, worker_role, reader_role)
    if ready.grants:
        out.print("\n".join(ready.grants), highlight=False, markup=False)
        say(f"store ready at {ready.store} ({ready.dimension} dimensions); run the GRANTs above as its owner")
    else:
        say(f"store ready at {ready.store}")
