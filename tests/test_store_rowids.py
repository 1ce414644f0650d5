"""The SQLite store's new rows take the rowids after the largest without RETURNING (issue #11): whatever was
deleted, replaced or written twice before, and whichever process writes, every stored row keeps exactly its
own windows. A wrong rowid shows as a row whose vectors or spans are another row's, or as a window left over."""

from __future__ import annotations

import multiprocessing
import random
import zlib
from pathlib import Path

import numpy as np

from csvembed.store import StoredRow
from csvembed.store.sqlite import SqliteStore

DIMENSION = 8


def window_vectors(text: str, count: int) -> np.ndarray:
    """The vectors of a row's windows, derived from its text alone: a row whose windows are another row's fails."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    found = rng.random((count, DIMENSION)).astype(np.float32) + 0.1
    return found / np.linalg.norm(found, axis=1, keepdims=True)


def stored_row(row_id: str, submission: str, number: int, text: str, submitted_at: float, count: int) -> StoredRow:
    spans = [(index, index + 1) for index in range(count)] if count > 1 else None
    return StoredRow(collection="c", id=row_id, submission=submission, row_number=number, text=text,
                     row_json="{}", model="m", submitted_at=submitted_at, spans=spans)


def write(store: SqliteStore, rows: list[StoredRow]) -> None:
    store.write(rows, np.concatenate([window_vectors(row.text, len(row.windows)) for row in rows]))


def everything(store: SqliteStore) -> dict[str, tuple[str, str, list[tuple[int, int]], np.ndarray]]:
    """id -> (submission, text, spans, vectors) of every stored row."""
    submissions = [name for (name,) in store.connection.execute("SELECT DISTINCT submission FROM rows")]
    return {row_id: (submission, text, spans, vectors) for submission in submissions
            for row_id, _, text, _, spans, vectors in store.windows_of_submission(submission)}


def check_windows(store: SqliteStore) -> dict[str, tuple[str, str, list[tuple[int, int]], np.ndarray]]:
    """Every stored row's windows are its own, and no window is left without its row."""
    rows = everything(store)
    for row_id, (_, text, spans, vectors) in rows.items():
        expected = [(0, len(text))] if len(spans) == 1 else [(index, index + 1) for index in range(len(spans))]
        assert spans == expected, row_id
        np.testing.assert_allclose(vectors, window_vectors(text, len(spans)), err_msg=row_id)
    assert store.counts() == (len(rows), sum(len(spans) for _, _, spans, _ in rows.values()))
    return rows


def test_random_writes_and_deletes_leave_each_row_its_own_windows(tmp_path):
    """Batches mixing new ids, stored ids (growing and shrinking their windows) and ids twice, between deletes
    of the submissions that hold the largest rowids, or any others: checked against a plain model after each."""
    chance = random.Random(11)
    store = SqliteStore(tmp_path / "store.db")
    expected: dict[str, tuple[str, str, int]] = {}  # id -> (submission, text, windows)
    for step in range(150):
        submission = f"s{step}"
        if expected and chance.random() < 0.2:
            gone = chance.choice(sorted({held for held, _, _ in expected.values()} | {submission}))
            store.delete_submission(gone)
            expected = {row_id: row for row_id, row in expected.items() if row[0] != gone}
        else:
            rows = []
            for number in range(1, chance.randint(1, 8) + 1):
                row_id = str(chance.randint(0, 15))  # few ids: most batches hold stored ones, some an id twice
                text = f"{submission}-{number}-{row_id}"
                rows.append(stored_row(row_id, submission, number, text, float(step), chance.randint(1, 3)))
            write(store, rows)
            for row in rows:  # the later of an id twice wins
                expected[row.id] = (submission, row.text, len(row.windows))
        found = check_windows(store)
        assert {row_id: (held, text, len(spans)) for row_id, (held, text, spans, _) in found.items()} == expected
    store.close()


def _write_from_another_process(path: str, worker: int, start: multiprocessing.synchronize.Event) -> None:
    store = SqliteStore(Path(path))
    start.wait()
    chance = random.Random(worker)
    for batch in range(60):
        submission = f"w{worker}-{batch}"
        rows = [stored_row(str(chance.randint(0, 200)), submission, number, f"{submission}-{number}",
                           float(batch), chance.randint(1, 3)) for number in range(1, 9)]
        write(store, rows)
    store.close()


def test_processes_writing_one_store_at_once_keep_each_row_its_own_windows(tmp_path):
    """Three workers write interleaved batches of new and shared ids: each batch reads the largest rowid under its
    own write lock, so no process takes rowids another gave out."""
    context = multiprocessing.get_context("spawn")
    path = tmp_path / "store.db"
    SqliteStore(path).close()  # the schema, before they race
    start = context.Event()
    workers = [context.Process(target=_write_from_another_process, args=(str(path), worker, start))
               for worker in range(3)]
    for process in workers:
        process.start()
    start.set()
    for process in workers:
        process.join(120)
    assert [process.exitcode for process in workers] == [0, 0, 0]
    store = SqliteStore(path, read_only=True)
    rows = check_windows(store)
    assert len(rows) > 150  # most of the 201 ids were written
    store.close()
