"""Embed and store a batch of rows, so that one bad row fails alone and the rest are stored.

The worker calls `Ingestor.ingest` with every row it holds: one model call, one transaction.
It returns, per row, None for settled (stored, or dropped because its submission was deleted) or
the exception that failed it; nothing is marked in Redis here, so a row is only ever marked done by
the caller after the transaction committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from csvembed.embedder import Embedder, bad_vector_reason
from csvembed.errors import RowError
from csvembed.jobs import RowTask
from csvembed.progress import SubmissionRecords
from csvembed.store import Store, StoredRow, row_json

log = logging.getLogger(__name__)


class Ingestor:
    """Holds the loaded model, the store and the submission records for one worker process."""

    def __init__(self, embedder: Embedder, store: Store, records: SubmissionRecords) -> None:
        self.embedder = embedder
        self.store = store
        self.records = records
        self._submissions: dict[str, tuple[str, list[str], float] | None] = {}

    def _submission(self, submission_id: str) -> tuple[str, list[str], float] | None:
        """(collection, columns, created_at) of a submission, None if it is gone; they never change, so
        they are cached (the store itself refuses rows of a submission deleted later)."""
        if submission_id not in self._submissions:
            self._submissions[submission_id] = self.records.origin(submission_id)
        return self._submissions[submission_id]

    def _stored_row(self, task: RowTask) -> StoredRow | None:
        """The row to write, or None for a row of a deleted submission: nothing of it may be kept.

        Failing it instead would leave a failed job (and RQ's result stream) behind after `delete`.
        """
        origin = self._submission(task.submission_id)
        if origin is None:
            return None
        collection, columns, submitted_at = origin
        if not task.text.strip():
            raise RowError("empty text: nothing to embed")
        return StoredRow(
            collection=collection,
            id=task.row_id,
            submission=task.submission_id,
            row_number=task.row_number,
            text=task.text,
            row_json=row_json(columns, task.values),
            model=self.embedder.name,
            submitted_at=submitted_at,
        )

    def ingest(self, tasks: Sequence[RowTask]) -> list[Exception | None]:
        """Embed and store tasks; per task, None if settled, else why it failed.

        The store itself refuses rows of a submission deleted meanwhile (in the write's transaction).
        A failure of the store itself (for instance a lock held past the busy timeout) raises:
        then no row of the batch was stored and every one of them should be retried.
        """
        outcomes: list[Exception | None] = [None] * len(tasks)
        rows: list[StoredRow] = []
        positions: list[int] = []
        for position, task in enumerate(tasks):
            try:
                row = self._stored_row(task)
            except RowError as exc:
                outcomes[position] = exc
                continue
            if row is not None:
                rows.append(row)
                positions.append(position)
        if not rows:
            return outcomes
        vectors = self._encode([row.text for row in rows], outcomes, positions)
        keep = [i for i, position in enumerate(positions) if outcomes[position] is None]
        if keep:
            self.store.write([rows[i] for i in keep], vectors[keep])
        return outcomes

    def _encode(self, texts: list[str], outcomes: list[Exception | None], positions: list[int]) -> np.ndarray:
        """One model call for the batch; if it raises, one call per row to find the bad one."""
        try:
            vectors = self.embedder.encode(texts)
        except Exception:
            log.warning("batched encode of %d rows failed; encoding them one by one", len(texts), exc_info=True)
            vectors = np.zeros((len(texts), self.embedder.dimension), dtype=np.float32)
            for i, text in enumerate(texts):
                try:
                    vectors[i] = self.embedder.encode([text])[0]
                except Exception as exc:  # a model error on one row fails that row alone
                    outcomes[positions[i]] = RowError(f"the model failed on this row: {type(exc).__name__}: {exc}")
        # One pass over the whole batch; bad_vector_reason only for the rows it flags (per-row numpy
        # calls cost more than the rest of a row's handling with a fast model).
        suspect = ~(np.isfinite(vectors).all(axis=1) & vectors.any(axis=1))
        for i in np.flatnonzero(suspect):
            if outcomes[positions[i]] is None and (reason := bad_vector_reason(vectors[i])):
                outcomes[positions[i]] = RowError(reason)
        return vectors
