"""search: embed the query with the same model, then a k-nearest lookup in the store."""

from __future__ import annotations

from csvembed.embedder import SentenceTransformerEmbedder
from csvembed.settings import Settings
from csvembed.store import Hit, open_existing_store


def search(
    settings: Settings,
    query: str,
    k: int,
    collection: str | None = None,
    submission: str | None = None,
    where: dict[str, str] | None = None,
) -> list[Hit]:
    """The k stored rows nearest to the query, nearest first; empty if nothing is stored yet."""
    store = open_existing_store(settings.db)
    if store is None:
        return []
    try:
        if store.dimension is None:
            return []
        vector = SentenceTransformerEmbedder(settings.model).encode([query])[0]
        return store.search(vector, k, collection=collection, submission=submission, where=where)
    finally:
        store.close()
