"""Embed and store a batch of rows, so that one bad row fails alone and the rest are stored.

The worker calls `Ingestor.ingest` with every row it holds: one model call, one transaction.
It returns, per row, its Shape once settled (stored, or dropped because its submission was deleted:
no windows) or the exception that failed it; nothing is marked in Redis here, so a row is only ever
marked done by the caller after the transaction committed. When the store refuses a batch for the data of
some of its rows (Store.rejected), the batch is stored in halves until each such row is alone: it fails by
itself, for good, and the others are stored.

A text longer than the model's window is read as its submission's --long-text policy says
(csvembed.windows): every window of every row of the batch goes into the one model call, whose
length sort puts the windows of a long row into sub-batches of similar length.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from csvembed.embedder import Embedder, bad_vector_reason
from csvembed.errors import RowError
from csvembed.jobs import RowTask
from csvembed.store import Store, StoredRow, reading, row_json
from csvembed.submissions import Origin, SubmissionRecords
from csvembed.windows import MAX_WINDOWS, Shape, piece_chars, split

log = logging.getLogger(__name__)

# The outcome of a row stored in one window, all of its text (most rows: one shared instance), and of a row
# of a deleted submission, dropped.
_WHOLE = Shape(1, False)
_DROPPED = Shape(0, False)


class Embedded(NamedTuple):
    """A batch embedded and not yet stored: each task's outcome so far, the (row, task position) pairs to
    write, and their windows' vectors stacked in row order."""

    outcomes: list[Exception | Shape]
    rows: list[tuple[StoredRow, int]]
    vectors: np.ndarray | None


class Ingestor:
    """Holds the loaded model, the store and the submission records for one worker process."""

    def __init__(self, embedder: Embedder, store: Store, records: SubmissionRecords) -> None:
        self.embedder = embedder
        self.store = store
        self.records = records
        self._submissions: dict[str, Origin | None] = {}

    def _submission(self, submission_id: str) -> Origin | None:
        """How to store a submission's rows, None if it is gone; it never changes, so it is cached (the
        store itself refuses rows of a submission deleted later)."""
        if submission_id not in self._submissions:
            self._submissions[submission_id] = self.records.origin(submission_id)
        return self._submissions[submission_id]

    def _stored_row(self, task: RowTask, origin: Origin, fits: bool) -> tuple[StoredRow, bool]:
        """The row to write with its windows and whether text was cut off; `fits`: its text is one window.

        A text that does not fit is split as its submission's --long-text policy says (csvembed.windows).
        """
        text = task.text
        policy = origin.long_text
        if fits:
            spans, truncated, long = [(0, len(text))], False, False
        else:
            found = split(text, self.embedder.token_spans, self.embedder.window_tokens, origin.window_overlap,
                          MAX_WINDOWS if policy == "window" else 1, self.embedder.text_cap)
            spans, truncated = found.spans, found.truncated
            long = truncated or len(spans) > 1
        if long and policy == "fail":
            raise RowError(f"longer than the model's window ({self.embedder.max_seq_length} tokens)")
        # Positional: StoredRow(collection, id, submission, row_number, text, row_json, model, submitted_at, spans,
        # reading), built per row.
        row = StoredRow(origin.collection, task.row_id, task.submission_id, task.row_number, text,
                        row_json(origin.columns, task.values), self.embedder.name, origin.created_at, spans,
                        reading(policy, origin.window_overlap) if long else "")
        return row, truncated

    def _fitting(self, texts: list[str]) -> list[bool]:
        """Whether each text is one window: one tokenizer call for the batch (a call per row cost a fast model
        as much as its encode). A text longer than a window's tokens can span is not tokenized here."""
        piece = piece_chars(self.embedder.window_tokens)
        short = [i for i, text in enumerate(texts) if len(text) <= piece]
        fits = [False] * len(texts)
        window = self.embedder.window_tokens
        for i, count in zip(short, self.embedder.token_counts([texts[i] for i in short])):
            fits[i] = count <= window
        return fits

    def ingest(self, tasks: Sequence[RowTask]) -> list[Exception | Shape]:
        """Embed and store tasks; per task, its Shape if settled, else why it failed.

        The store itself refuses rows of a submission deleted meanwhile (in the write's transaction).
        A row whose data the store refuses fails alone (see `_write`). Any other failure of the store (for
        instance a lock held past the busy timeout) raises: every row of the batch should then be retried.
        """
        return self.save(self.embed(tasks))

    def embed(self, tasks: Sequence[RowTask]) -> Embedded:
        """The model's half of `ingest`: a worker stores one batch (`save`, on a thread of its own) while it
        embeds the next, so that a GPU's model calls need not wait for the store's writes."""
        outcomes: list[Exception | Shape] = [_DROPPED] * len(tasks)
        rows: list[StoredRow] = []
        positions: list[int] = []
        texts: list[str] = []
        owners: list[int] = []
        # A row of a deleted submission is dropped: nothing of it may be kept (failing it instead would leave a
        # failed job, and RQ's result stream, behind after `delete`).
        held: list[tuple[int, RowTask, Origin]] = []
        for position, task in enumerate(tasks):
            origin = self._submissions.get(task.submission_id) or self._submission(task.submission_id)
            if origin is None:
                continue
            if not task.text.strip():
                outcomes[position] = RowError("empty text: nothing to embed")
                continue
            held.append((position, task, origin))
        fitting = self._fitting([task.text for _, task, _ in held])
        for (position, task, origin), fits in zip(held, fitting):
            try:
                row, truncated = self._stored_row(task, origin, fits)
            except RowError as exc:
                outcomes[position] = exc
                continue
            rows.append(row)
            positions.append(position)
            spans = row.spans
            if len(spans) == 1 and not truncated:  # most rows: one window, all of the text
                outcomes[position] = _WHOLE
                start, end = spans[0]
                texts.append(row.text if start == 0 and end == len(row.text) else row.text[start:end])
                owners.append(position)
            else:
                outcomes[position] = Shape(len(spans), truncated)
                texts.extend(row.text[start:end] for start, end in spans)
                owners.extend([position] * len(spans))
        if not rows:
            return Embedded(outcomes, [], None)
        vectors = self._encode(texts, outcomes, owners)
        kept = [(row, position) for row, position in zip(rows, positions) if isinstance(outcomes[position], Shape)]
        if len(kept) < len(rows):  # the model failed some rows: their windows' vectors are left out
            vectors = vectors[np.array([isinstance(outcomes[owner], Shape) for owner in owners], dtype=bool)]
        return Embedded(outcomes, kept, vectors)

    def save(self, embedded: Embedded) -> list[Exception | Shape]:
        """The store's half of `ingest`: write an embedded batch in one transaction; per task, its outcome."""
        outcomes = embedded.outcomes
        if embedded.rows:
            self._write(embedded.rows, embedded.vectors, outcomes)
        cut = sum(isinstance(outcome, Shape) and outcome.truncated for outcome in outcomes)
        if cut:
            log.info("%d rows longer than the model's window were cut off (--long-text truncate, or past %d windows)",
                     cut, MAX_WINDOWS)
        return outcomes

    def _write(self, rows: list[tuple[StoredRow, int]], vectors: np.ndarray, outcomes: list[Exception | Shape]) -> None:
        """Store (row, position) pairs in one transaction. If the store refuses their data, split them in
        halves until each refused row is alone: every other row is stored and each refused one fails by
        itself (about 2·log2(n) writes for one bad row in n), so a retry never repeats the batch's failure.
        Any other error of the store raises, with every row of the batch to be retried."""
        try:
            self.store.write([row for row, _ in rows], vectors)
            return
        except Exception as exc:
            reason = self.store.rejected(exc)
            if reason is None:
                raise
        if len(rows) == 1:
            outcomes[rows[0][1]] = RowError(f"the store refused this row: {reason}")
            return
        log.warning("the store refused a batch of %d rows (%s): storing it in halves", len(rows), reason)
        middle = len(rows) // 2
        split_at = sum(len(row.windows) for row, _ in rows[:middle])
        self._write(rows[:middle], vectors[:split_at], outcomes)
        self._write(rows[middle:], vectors[split_at:], outcomes)

    def _encode(self, texts: list[str], outcomes: list[Exception | Shape], owners: list[int]) -> np.ndarray:
        """One model call for every window of the batch; if it raises, one call per window to find the bad
        rows. A window that fails fails its row."""
        try:
            vectors = self.embedder.encode(texts)
        except Exception:
            log.warning("batched encode of %d texts failed; encoding them one by one", len(texts), exc_info=True)
            vectors = np.zeros((len(texts), self.embedder.dimension), dtype=np.float32)
            for i, text in enumerate(texts):
                try:
                    vectors[i] = self.embedder.encode([text])[0]
                except Exception as exc:  # a model error on one row fails that row alone
                    outcomes[owners[i]] = RowError(f"the model failed on this row: {type(exc).__name__}: {exc}")
        # One pass over the whole batch; bad_vector_reason only for the vectors it flags (per-row numpy
        # calls cost more than the rest of a row's handling with a fast model).
        suspect = ~(np.isfinite(vectors).all(axis=1) & vectors.any(axis=1))
        for i in np.flatnonzero(suspect):
            if isinstance(outcomes[owners[i]], Shape) and (reason := bad_vector_reason(vectors[i])):
                outcomes[owners[i]] = RowError(reason)
        return vectors
