"""One store shared by many hosts and models: a collection keeps one model, and filtered search finds k rows."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_csv
from csvembed.errors import InputError
from csvembed.search import search
from csvembed.store import StoredRow, open_store

BOTH_STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)]


def rows_of(collection: str, model: str, count: int, start: int = 0, submission: str = "s1") -> list[StoredRow]:
    return [StoredRow(collection, f"r{i}", submission, i, f"text {i}", f'{{"n": "{i % 3}"}}', model)
            for i in range(start, start + count)]


def unit_vectors(count: int, dimension: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_a_collection_keeps_its_model(env):
    store = open_store(env.db)
    try:
        store.write(rows_of("books", "model-a", 2), unit_vectors(2, 16, 1))
        with pytest.raises(InputError) as refused:
            store.write(rows_of("books", "model-a+int8", 1), unit_vectors(1, 16, 2))
        assert str(refused.value) == (
            "the collection 'books' holds rows of the model model-a, not model-a+int8: use another --collection,"
            " or delete the collection first (csvembed delete --collection books)")
        store.write(rows_of("other", "model-a+int8", 1), unit_vectors(1, 16, 3))
        assert store.models() == {"books": "model-a", "other": "model-a+int8"}
        assert store.counts() == (3, 3)
        assert store.delete_collection("books") == 2
        store.write(rows_of("books", "model-b", 1, submission="s2"), unit_vectors(1, 16, 4))  # emptied: any model
        assert store.models("books") == {"books": "model-b"}
    finally:
        store.close()


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_search_with_another_model_is_refused_before_it_loads(env):
    store = open_store(env.db)
    store.write(rows_of("books", "model-a", 2), unit_vectors(2, 16, 1))
    store.write(rows_of("films", "model-b", 2), unit_vectors(2, 16, 1))
    store.close()
    settings = env.settings  # all-MiniLM-L6-v2: 384 dimensions, where the store holds 16
    with pytest.raises(InputError) as refused:
        search(settings, "query", 5, collection="books")
    assert str(refused.value) == ("the collection 'books' holds rows of the model model-a, but search uses"
                                  " all-MiniLM-L6-v2: search with the model it was stored with (--model, --precision)")
    with pytest.raises(InputError) as refused:
        search(settings, "query", 5)
    assert str(refused.value) == ("the store holds rows of the model model-a and model-b, but search uses"
                                  " all-MiniLM-L6-v2: search with the model they were stored with"
                                  " (--model, --precision)")
    with pytest.raises(InputError) as refused:
        search(settings, "query", 5, submission="s1")
    assert "holds rows of the model model-a, but search uses all-MiniLM-L6-v2" in str(refused.value)


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_submit_into_a_collection_of_another_model_is_refused(env, submit):
    store = open_store(env.db)
    store.write(rows_of("books", "model-a", 1), unit_vectors(1, 16, 1))
    store.close()
    path = write_csv(env.dir / "books.csv", "text\nhello\n")
    with pytest.raises(InputError) as refused:
        submit(path, model="model-b")
    assert str(refused.value).startswith("the collection 'books' holds rows of the model model-a, not model-b:")
    assert env.connection.zcard("csvembed:submissions") == 0
    assert submit(path, model="model-a").enqueued == 1


@pytest.mark.slow
@pytest.mark.parametrize("env", ["postgres"], indirect=True)
def test_a_filtered_search_finds_the_exact_nearest_of_a_small_collection_beside_many_rows(env):
    big = unit_vectors(30_000, 16, 5)
    # The tiny collection lies opposite the query (big[0]): an index walk from the query meets it last.
    tiny = unit_vectors(10, 16, 6) * 0.3 - big[0]
    tiny /= np.linalg.norm(tiny, axis=1, keepdims=True)
    store = open_store(env.db)
    try:
        for start in range(0, len(big), 5000):
            store.write(rows_of("big", "model-a", 5000, start), big[start:start + 5000])
        store.write(rows_of("tiny", "model-a", 10, submission="s2"), tiny)
        query = big[0]
        nearest = [f"r{i}" for i in np.argsort(1 - tiny @ query, kind="stable")]
        assert [hit.id for hit in store.search(query, 5, collection="tiny")] == nearest[:5]
        ones = [row_id for row_id in nearest if int(row_id[1:]) % 3 == 1]  # n = "1": rows 1, 4, 7
        assert [hit.id for hit in store.search(query, 2, collection="tiny", where={"n": "1"})] == ones[:2]
        assert [hit.id for hit in store.search(query, 5, where={"n": "1"}, submission="s2")] == ones
        assert len(store.search(query, 5, collection="big")) == 5
    finally:
        store.close()
