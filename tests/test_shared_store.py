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
