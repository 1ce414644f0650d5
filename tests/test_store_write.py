"""The SQLite store's batched write (issue #11): a batch is a few statements, not a few per row, and stores
exactly what row-by-row writes stored: a new row inserted, an existing row replaced with all of its windows,
a row of an older submission or an earlier row number ignored, an id twice in one batch kept once (the later),
nothing of a deleted submission."""

from __future__ import annotations

import numpy as np
import pytest

from csvembed.store import StoredRow
from csvembed.store.sqlite import SqliteStore

DIMENSION = 8
# vec0 keeps a text metadata value longer than 12 bytes apart: an updated window must carry it too.
LONG = "s3-a-submission-id-longer-than-twelve-bytes"


def vectors(*seeds: int) -> np.ndarray:
    """One unit vector per seed, distinct per seed."""
    found = np.stack([np.random.default_rng(seed).random(DIMENSION) for seed in seeds]).astype(np.float32)
    return found / np.linalg.norm(found, axis=1, keepdims=True)


def row(row_id: str, submission: str, number: int, text: str, submitted_at: float,
        spans: list[tuple[int, int]] | None = None) -> StoredRow:
    return StoredRow(collection="c", id=row_id, submission=submission, row_number=number, text=text,
                     row_json=f'{{"text": "{text}"}}', model="m", submitted_at=submitted_at, spans=spans)


def stored(store: SqliteStore) -> dict[str, tuple[str, str, list[tuple[int, int]], np.ndarray]]:
    """id -> (submission, text, spans, window vectors) of every stored row."""
    found = {}
    for submission in ("s1", "s2", LONG):
        for row_id, _, text, _, spans, windows in store.windows_of_submission(submission):
            found[row_id] = (submission, text, spans, windows)
    return found


@pytest.fixture
def store(tmp_path):
    opened = SqliteStore(tmp_path / "store.db")
    yield opened
    opened.close()


def test_an_updated_row_has_its_windows_replaced_and_a_new_row_is_inserted(store):
    store.write([row("a", "s1", 1, "alpha", 1.0), row("b", "s1", 2, "beta", 1.0)], vectors(1, 2))
    # b comes back from a later submission with two windows; c is new; a stays as it was.
    store.write([row("b", "s2", 1, "beta two", 2.0, spans=[(0, 4), (5, 8)]), row("c", "s2", 2, "gamma", 2.0)],
                vectors(3, 4, 5))

    rows = stored(store)
    assert sorted(rows) == ["a", "b", "c"]
    assert rows["a"][:3] == ("s1", "alpha", [(0, 5)])
    np.testing.assert_allclose(rows["a"][3], vectors(1))
    assert rows["b"][:3] == ("s2", "beta two", [(0, 4), (5, 8)])
    np.testing.assert_allclose(rows["b"][3], vectors(3, 4))  # beta's old vector is gone
    assert rows["c"][:3] == ("s2", "gamma", [(0, 5)])
    np.testing.assert_allclose(rows["c"][3], vectors(5))
    assert store.counts() == (3, 4)

    # b shrinks back to one window: its second window goes; a grows to three.
    store.write([row("b", LONG, 1, "beta", 3.0), row("a", LONG, 2, "alpha two", 3.0, spans=[(0, 3), (3, 6), (6, 9)])],
                vectors(6, 7, 8, 9))
    rows = stored(store)
    assert rows["b"][:3] == (LONG, "beta", [(0, 4)])
    np.testing.assert_allclose(rows["b"][3], vectors(6))
    assert rows["a"][:3] == (LONG, "alpha two", [(0, 3), (3, 6), (6, 9)])
    np.testing.assert_allclose(rows["a"][3], vectors(7, 8, 9))
    assert store.counts() == (3, 5)
    # Search filters on the updated windows' submission, and finds their new vectors.
    nearest = store.search(vectors(8)[0], 1, submission=LONG)[0]
    assert (nearest.id, nearest.match, round(nearest.distance, 5)) == ("a", {"start": 3, "end": 6}, 0)
    assert [hit.id for hit in store.search(vectors(3)[0], 3, submission="s2")] == ["c"]


def test_a_row_of_an_older_submission_leaves_the_stored_row_and_its_vector(store):
    store.write([row("a", "s2", 1, "newer", 2.0)], vectors(1))
    store.write([row("a", "s1", 1, "older", 1.0), row("b", "s1", 2, "beta", 1.0)], vectors(2, 3))

    rows = stored(store)
    assert rows["a"][:2] == ("s2", "newer")
    np.testing.assert_allclose(rows["a"][3], vectors(1))
    np.testing.assert_allclose(rows["b"][3], vectors(3))
    assert store.counts() == (2, 2)


def test_an_id_twice_in_one_batch_keeps_the_later_row_only(store):
    store.write([row("a", "s1", 1, "first", 1.0, spans=[(0, 2), (2, 5)]), row("b", "s1", 2, "beta", 1.0),
                 row("a", "s1", 3, "third", 1.0)], vectors(1, 2, 3, 4))

    rows = stored(store)
    assert rows["a"][:3] == ("s1", "third", [(0, 5)])
    np.testing.assert_allclose(rows["a"][3], vectors(4))
    np.testing.assert_allclose(rows["b"][3], vectors(3))
    assert store.counts() == (2, 2)


def test_rows_of_a_deleted_submission_are_left_out_of_a_batch(store):
    store.write([row("a", "s1", 1, "alpha", 1.0)], vectors(1))
    store.delete_submission("s1")
    store.write([row("b", "s1", 2, "beta", 1.0), row("c", "s2", 1, "gamma", 2.0)], vectors(2, 3))

    rows = stored(store)
    assert sorted(rows) == ["c"]
    np.testing.assert_allclose(rows["c"][3], vectors(3))
    assert store.counts() == (1, 1)


def reference_content_hash(model: str, text: str, row_json: str, reading: str = "") -> str:
    """content_hash as every release before issue #11 computed it: stored hashes decide skip-unchanged."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for part in (model, text, row_json, *((reading,) if reading else ())):
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


@pytest.mark.parametrize("values", [
    ["1", "plain"], ["", ""], ["é", "日本の茶 \u2028 \U0001f600"], ['say "hi"\\', "tab\there\nnew line\x00nul\x1f"],
    ["a" * 10_000, "\ud7ff\ue000\uffff"],
])
@pytest.mark.parametrize("reading", ["", "window/32", "truncate"])
def test_row_json_and_content_hash_are_byte_identical_to_earlier_releases(values, reading):
    import json

    from csvembed.store import content_hash, row_json

    for columns in (["id", "text"], ["text", "text"], ["ключ", "k\"ey"]):  # a repeated column keeps its last value
        expected = json.dumps(dict(zip(columns, values)), ensure_ascii=False)
        assert row_json(columns, values) == expected
        for model in ("all-MiniLM-L6-v2", "ü-model"):
            assert content_hash(model, values[1], expected, reading) == reference_content_hash(
                model, values[1], expected, reading)


def test_a_new_store_keeps_its_vectors_in_chunks_of_256(store):
    # A shorter chunk blob is cheaper to write into (SQLite walks its overflow pages up to the offset written).
    store.write([row(str(n), "s1", n, f"row {n}", 1.0) for n in range(300)], vectors(*range(300)))

    assert list(store.connection.execute("SELECT size FROM window_vectors_chunks ORDER BY chunk_id")) == [
        (256,), (256,)]
    rows = stored(store)
    assert len(rows) == 300
    np.testing.assert_allclose(np.concatenate([rows[str(n)][3] for n in range(300)]), vectors(*range(300)))
    nearest = store.search(vectors(299)[0], 1)[0]
    assert (nearest.id, round(nearest.distance, 5)) == ("299", 0)


def test_each_new_row_gets_its_own_windows_whatever_rowids_were_used_before(store):
    """A new row's rowid (its windows' key) is known without RETURNING: after a delete freed the largest rowids,
    and in a batch that mixes new ids with stored ones, each row keeps exactly its own vectors."""
    store.write([row("a", "s1", 1, "alpha", 1.0), row("b", "s1", 2, "beta", 1.0)], vectors(1, 2))
    store.write([row("c", "s2", 1, "gamma", 2.0, spans=[(0, 2), (2, 5)]), row("d", "s2", 2, "delta", 2.0)],
                vectors(3, 4, 5))
    assert store.delete_submission("s2") == 2  # the rows with the largest rowids
    store.write([row("e", "s1", 3, "epsilon", 1.0), row("f", "s1", 4, "phi", 1.0, spans=[(0, 1), (1, 3)])],
                vectors(6, 7, 8))
    # New and stored ids, interleaved: g and h are new, f and a are replaced by a later submission.
    store.write([row("g", LONG, 1, "eta", 3.0), row("f", LONG, 2, "phi two", 3.0), row("h", LONG, 3, "theta", 3.0),
                 row("a", LONG, 4, "alpha two", 3.0, spans=[(0, 5), (5, 9)])], vectors(9, 10, 11, 12, 13))

    rows = stored(store)
    assert {row_id: rows[row_id][:3] for row_id in rows} == {
        "b": ("s1", "beta", [(0, 4)]), "e": ("s1", "epsilon", [(0, 7)]), "g": (LONG, "eta", [(0, 3)]),
        "f": (LONG, "phi two", [(0, 7)]), "h": (LONG, "theta", [(0, 5)]), "a": (LONG, "alpha two", [(0, 5), (5, 9)])}
    for row_id, seeds in {"b": (2,), "e": (6,), "g": (9,), "f": (10,), "h": (11,), "a": (12, 13)}.items():
        np.testing.assert_allclose(rows[row_id][3], vectors(*seeds))
    assert store.counts() == (6, 7)
