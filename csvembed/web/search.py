"""GET /search: the stored rows nearest to a query, as `search --json` prints them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from csvembed import defaults
from csvembed.search import parse_where
from csvembed.web.deps import Api

router = APIRouter(tags=["search"])


@router.get("/search", summary="The k stored rows nearest to q by cosine distance, nearest first")
def search(api: Api, q: str, k: Annotated[int, Query(ge=1, le=defaults.SEARCH_MAX_K)] = defaults.SEARCH_K,
           collection: str | None = None, submission: str | None = None,
           where: Annotated[list[str], Query(description="COLUMN=VALUE, repeatable: all must hold")] = []
           ) -> list[dict]:
    hits = api.search(q, k, collection=collection, submission=submission, where=parse_where(where))
    return [hit.__dict__ for hit in hits]
