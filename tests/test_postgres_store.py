"""The PostgreSQL store under attack: concurrent writers of the same ids, and what it gives back compared
with the SQLite store."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_shared_store import unit_vectors

from csvembed.store import StoredRow, open_store
from csvembed.store.base import row_json


@pytest.mark.slow
@pytest.mark.parametrize("env", ["postgres"], indirect=True)
def test_two_batches_of_the_same_ids_in_opposite_orders_both_commit_and_the_later_submission_wins(env):
    """Each batch locks its rows as it upserts them: in file order, two re-sorted submissions of one file
    deadlocked, and the rows of the one PostgreSQL aborted failed after their retries (the later one's, too)."""
    count = 3000
    store = open_store(env.db)
    store.write([StoredRow("c", f"r{i}", "s0", i, "first", "{}", "m") for i in range(count)], unit_vectors(count, 8, 0))
    store.close()
    start, errors = threading.Barrier(2), []

    def write(submission: str, submitted_at: float, numbers: list[int]) -> None:
        own = open_store(env.db)
        try:
            rows = [StoredRow("c", f"r{i}", submission, i, f"{submission} {i}", "{}", "m", submitted_at=submitted_at)
                    for i in numbers]
            start.wait()
            for _ in range(3):  # as a worker's retries of a batch would
                own.write(rows, unit_vectors(count, 8, int(submitted_at)))
        except Exception as error:  # noqa: BLE001 - the test reports what a writer met
            errors.append(f"{submission}: {type(error).__name__}: {error}")
        finally:
            own.close()

    writers = [threading.Thread(target=write, args=("old", 1.0, list(range(count)))),
               threading.Thread(target=write, args=("new", 2.0, list(range(count))[::-1]))]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert errors == []
    store = open_store(env.db)
    try:
        assert [row_id for submission in ("s0", "old") for row_id, *_ in store.rows_of_submission(submission)] == []
        stored = {row_id: text for row_id, _, text, _, _ in store.rows_of_submission("new")}
        assert stored == {f"r{i}": f"new {i}" for i in range(count)}
        assert store.counts() == (count, count)
        assert np.allclose(next(store.rows_of_submission("new"))[4], unit_vectors(count, 8, 2)[-1])
    finally:
        store.close()


@pytest.mark.parametrize("env", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)], indirect=True)
def test_search_and_export_give_the_row_as_written_in_the_csvs_column_order(env):
    """jsonb re-sorts keys (shorter first): PostgreSQL gave {"b": .., "id": .., "zeta": ..} where SQLite, and
    the README (`row` is the original CSV row exactly as written), give the CSV's order."""
    written = row_json(["zeta", "id", "b", "%s", "a.b"], ["1", "r1", "x'y", "?", "é"])
    store = open_store(env.db)
    try:
        store.write([StoredRow("c", "r1", "s1", 1, "text", written, "m")], unit_vectors(1, 8, 1))
        (hit,) = store.search(unit_vectors(1, 8, 1)[0], 5, where={"a.b": "é", "%s": "?"})
        assert list(hit.row) == ["zeta", "id", "b", "%s", "a.b"]
        assert [row for _, _, _, row, _ in store.rows_of_submission("s1")] == [written]
        assert store.columns("c") == ["%s", "a.b", "b", "id", "zeta"]
        assert store.has_column("%s", "c") and not store.has_column("a", "c")
    finally:
        store.close()
