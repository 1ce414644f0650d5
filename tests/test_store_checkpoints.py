"""The SQLite store's WAL checkpoints once rows are written (issue #11): off the writing thread (a checkpoint's
copy and fsyncs inside COMMIT cost a fast worker ~4 µs a row), with the WAL still bounded, and nothing
committed lost."""

from __future__ import annotations

import threading
from pathlib import Path

import apsw
import numpy as np
import pytest

from csvembed.store import StoredRow
from csvembed.store import sqlite as sqlite_store
from csvembed.store.sqlite import SqliteStore

DIMENSION = 64
BATCH = 64


class SyncRecorder(apsw.VFS):
    """The default VFS, made default under another name, that records which thread syncs which file."""

    def __init__(self) -> None:
        self.syncs: list[tuple[str, str]] = []
        self.base = apsw.vfs_names()[0]
        super().__init__("sync-recorder", base=self.base, makedefault=True)

    def xOpen(self, name, flags):
        return SyncRecordingFile(self, name, flags)


class SyncRecordingFile(apsw.VFSFile):
    def __init__(self, vfs: SyncRecorder, name, flags) -> None:
        self._vfs = vfs
        self._name = name.filename() if isinstance(name, apsw.URIFilename) else str(name)
        super().__init__(vfs.base, name, flags)

    def xSync(self, flags: int) -> None:
        self._vfs.syncs.append((threading.current_thread().name, Path(self._name).name))
        super().xSync(flags)


@pytest.fixture
def recorder():
    vfs = SyncRecorder()
    yield vfs
    vfs.unregister()


def write_all(store: SqliteStore, count: int) -> list[int]:
    """Write `count` batches; the pages in the WAL after each."""
    pages = []
    for batch in batches(count):
        store.write(batch, vectors())
        pages.append(store._wal_pages)
    return pages


def bounded(pages: list[int], bound: int) -> bool:
    """Whether the WAL never held more than `bound` pages and one batch's (the most a write added)."""
    return max(pages) < bound + max(after - before for before, after in zip(pages, pages[1:]))


def wal_frames(path: Path) -> int:
    """The frames a WAL file has room for: its header is 32 bytes, each frame's 24 bytes and a page."""
    return ((path.parent / f"{path.name}-wal").stat().st_size - 32) // (4096 + 24)


def batches(count: int) -> list[list[StoredRow]]:
    return [[StoredRow(collection="c", id=str(i), submission="s1", row_number=i, text=f"row {i}",
                       row_json=f'{{"text": "row {i}"}}', model="m", submitted_at=1.0)
             for i in range(start, start + BATCH)] for start in range(0, count * BATCH, BATCH)]


def vectors() -> np.ndarray:
    return np.full((BATCH, DIMENSION), 1 / np.sqrt(DIMENSION), dtype=np.float32)


def test_the_writer_never_syncs_the_database_another_thread_checkpoints(tmp_path, recorder, monkeypatch):
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_PAGES", 50)
    store = SqliteStore(tmp_path / "store.db")
    recorder.syncs.clear()  # creating the schema
    write_all(store, 40)  # some 400 pages: several checkpoints' worth
    store._checkpointer.close()  # waits for the checkpoint in flight, if any
    # A checkpoint syncs the WAL, then the database; the writer syncs no more than a new WAL's header.
    by_thread = {(thread, name) for thread, name in recorder.syncs}
    assert {("csvembed-checkpoint", "store.db-wal"), ("csvembed-checkpoint", "store.db")} <= by_thread
    assert by_thread <= {("csvembed-checkpoint", "store.db-wal"), ("csvembed-checkpoint", "store.db"),
                         ("MainThread", "store.db-wal")}
    store.connection.close()


def test_the_wal_stays_bounded_when_the_checkpointer_cannot_keep_up(tmp_path, monkeypatch):
    """A checkpointer that never runs: the writer checkpoints itself once the WAL holds CHECKPOINT_BEHIND_PAGES,
    and the next write starts the WAL over, so that it never holds much more."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_PAGES", 20)
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_BEHIND_PAGES", 100)
    monkeypatch.setattr(sqlite_store._Checkpointer, "request", lambda self: None)
    store = SqliteStore(tmp_path / "store.db")
    pages = write_all(store, 80)  # some 800 pages
    assert bounded(pages, 100)
    assert wal_frames(tmp_path / "store.db") == max(pages)  # the WAL was started over: its file never grew past
    assert store.counts() == (80 * BATCH, 80 * BATCH)
    store.close()


def test_a_busy_writer_keeps_its_wal_bounded_and_every_row(tmp_path, monkeypatch):
    """Writes back to back, with the checkpoint thread at work: the WAL is started over again and again."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_PAGES", 30)
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_BEHIND_PAGES", 120)
    store = SqliteStore(tmp_path / "store.db")
    pages = write_all(store, 120)  # some 1,200 pages
    assert bounded(pages, 120)
    assert wal_frames(tmp_path / "store.db") == max(pages)
    store.close()
    reopened = SqliteStore(tmp_path / "store.db", read_only=True)
    assert reopened.counts() == (120 * BATCH, 120 * BATCH)
    reopened.close()


def test_a_store_that_writes_no_rows_checkpoints_as_sqlite_does(tmp_path):
    """A delete (the CLI's writes) starts no thread: SQLite's own automatic checkpoint stays on."""
    store = SqliteStore(tmp_path / "store.db")
    assert store.delete_submission("s1") == 0
    assert store._checkpointer is None
    assert store.connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
    store.close()


def test_a_store_whose_file_was_removed_is_not_created_again_readable_by_others(tmp_path):
    """The checkpointer's own connection opens the store; it must not create it (with the umask's mode, 0644)
    when someone removed it while a worker ran: the next worker would store every row in that file."""
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    for file in tmp_path.iterdir():
        file.unlink()
    with pytest.raises(apsw.CantOpenError):
        store.write(batches(1)[0], vectors())
    assert list(tmp_path.iterdir()) == []
    store.close()
    reopened = SqliteStore(path)
    reopened.write(batches(1)[0], vectors())
    assert path.stat().st_mode & 0o777 == 0o600
    reopened.close()
