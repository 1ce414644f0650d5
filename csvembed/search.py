"""search: embed the query with the same model, then a k-nearest lookup in the store."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from csvembed.embedder import Embedder, load_embedder
from csvembed.errors import InputError
from csvembed.settings import Settings
from csvembed.store import Hit, Store, reading_store


def search(
    settings: Settings,
    query: str,
    k: int,
    collection: str | None = None,
    submission: str | None = None,
    where: dict[str, str] | None = None,
    embedder: Callable[[], Embedder] | None = None,
    shown: Sequence[str] = (),
) -> list[Hit]:
    """The k stored rows nearest to the query, nearest first.

    The store is opened read-only. A missing store, an unknown collection or an unknown --where
    column, or an unknown column of `shown` (those a caller will show beside each hit, search
    --column) is an InputError raised before the model loads: a typo costs no model load and is not
    mistaken for "no rows match" or a blank column. `embedder` gives the query's embedder when a long-lived caller
    keeps one loaded; by default the model is loaded for this one query.
    """
    if not query.strip():  # an empty query's vector is near nothing in particular: rows in an arbitrary order
        raise InputError("the query is empty: say what to look for")
    _check_no_nul(submission, where or {})
    with reading_store(settings.db) as store:
        check_filters(store, collection, where or {}, shown)
        # A submission's rows are all in its collection: only that collection's model matters.
        scope = collection if collection is not None or submission is None else store.collection_of(submission)
        check_model(store, settings.model_id, scope or None)
        model = embedder() if embedder is not None else query_embedder(settings)
        vector = model.encode([query])[0]
        return store.search(vector, k, collection=collection, submission=submission, where=where)


def query_embedder(settings: Settings) -> Embedder:
    """The workers' backend and precision: ONNX Runtime when they left an export here (no torch
    import, seconds faster), else PyTorch; the vectors are the same either way."""
    return load_embedder(settings, may_export=False)


def _check_no_nul(submission: str | None, where: dict[str, str]) -> None:
    """Raise InputError for a NUL in a filter (it can come over HTTP): nothing stored holds one, and
    PostgreSQL refuses even to be asked (a 500 otherwise)."""
    given = [("--submission", submission or ""), *(("--where", f"{column}={value}") for column, value in where.items())]
    for option, text in given:
        if "\x00" in text:
            raise InputError(f"{option} {text!r} holds a NUL character, which nothing stored can")


def check_filters(store: Store, collection: str | None, where: dict[str, str], shown: Sequence[str] = ()) -> None:
    """Raise InputError, listing what exists, for a collection, a --where column or a --column the store lacks."""
    if collection is not None:
        known = store.collections()
        if collection not in known:
            raise InputError(f"unknown collection {collection!r}; {_listing('collections', known)}")
    for option, columns in (("--where", where), ("--column", shown)):
        for column in columns:
            if not store.has_column(column, collection):
                raise InputError(f"unknown column {column!r} in {option};"
                                 f" {_listing('columns', store.columns(collection))}")


def check_model(store: Store, model: str, collection: str | None) -> None:
    """Raise InputError unless the rows searched were embedded by `model`: a query vector of another model
    (even of the same dimension) is not comparable with them."""
    models = store.models(collection)
    if collection is not None:
        if models[collection] != model:
            raise InputError(f"the collection {collection!r} holds rows of the model {models[collection]}, but"
                             f" search uses {model}: search with the model it was stored with (--model, --precision)")
        return
    if not models:
        return  # nothing stored: no rows to mistake
    found = sorted(set(models.values()))
    if model not in found:
        raise InputError(f"the store holds rows of the model {' and '.join(found)}, but search uses {model}:"
                         " search with the model they were stored with (--model, --precision)")
    if len(found) > 1:
        mine = ", ".join(name for name, stored in sorted(models.items()) if stored == model)
        raise InputError(f"the store holds rows of the models {' and '.join(found)}: pick one model's collection"
                         f" with --collection (those of {model}: {mine})")


def _listing(what: str, names: list[str]) -> str:
    return f"the {what} are: {', '.join(names)}" if names else "the store holds no rows"


def parse_where(conditions: list[str]) -> dict[str, str]:
    """COLUMN=VALUE conditions (search --where, GET /search?where=) as a dict."""
    where = {}
    for condition in conditions:
        column, sep, value = condition.partition("=")
        if not sep or not column:
            raise InputError(f"--where takes COLUMN=VALUE, not {condition!r}")
        where[column] = value
    return where
