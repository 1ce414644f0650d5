"""A submission's figures as every face shows them: counts from Redis, rate, elapsed and ETA derived.

Every figure comes from the reading alone (Redis), so the live bars, the plain line, `status --json`
and the HTTP API show the same rate and ETA at the same moment.
"""

from __future__ import annotations

from dataclasses import dataclass

from csvembed import defaults
from csvembed.monitor import Reading
from csvembed.submissions import Snapshot


def rate_of(snapshot: Snapshot) -> float | None:
    """Rows finished per second, measured only between moments when rows finished.

    Rows finish a batch at a time, so a rate taken at an arbitrary moment swings with the batch
    length. Running: from the latest such moment back to the latest one at least
    RATE_WINDOW_SECONDS before it (else to the first batch's start), so it spans whole batches
    and holds steady between them. Finished: the average from the first batch's start to the end.
    """
    if snapshot.started_at is None:
        return None
    if snapshot.finished:
        start, end, finished = snapshot.started_at, snapshot.updated_at, snapshot.done + snapshot.failed
        return finished / (end - start) if end is not None and end > start else None
    samples = [(snapshot.started_at, 0), *snapshot.samples]
    last_at, last_finished = samples[-1]
    base_at, base_finished = max((sample for sample in samples if sample[0] <= last_at - defaults.RATE_WINDOW_SECONDS),
                                 default=samples[0])
    if last_at <= base_at or last_finished <= base_finished:
        return None
    return (last_finished - base_finished) / (last_at - base_at)


def eta_of(snapshot: Snapshot, rate: float | None, at: float) -> float | None:
    """Seconds to go: the pending rows at `rate` from the latest moment rows finished, counting down
    from there (not blank between batches); 0 once finished, None until a first batch finished."""
    if snapshot.finished:
        return 0.0
    if not rate or not snapshot.samples:
        return None
    return max(snapshot.samples[-1][0] + snapshot.pending / rate - at, 0.0)


@dataclass
class Line:
    """One submission's figures as shown: counts from Redis, rate and times derived from them."""

    snapshot: Snapshot
    rate: float | None
    elapsed: float
    eta: float | None
    in_progress: int
    workers: int
    # The submission's model when its rows wait on a queue that no live worker listens on; else None.
    no_worker_for_model: str | None = None
    # Live workers of its queue that wait for the store to come back, and since when the first waits.
    waiting_for_store: int = 0
    store_waiting_since: float | None = None

    @property
    def work(self) -> int:
        return self.snapshot.total - self.snapshot.skipped

    def as_json(self) -> dict:
        return {**self.snapshot.as_json(), "rate": self.rate, "elapsed": self.elapsed, "eta": self.eta,
                "in_progress": self.in_progress, "workers": self.workers,
                "no_worker_for_model": self.no_worker_for_model, "waiting_for_store": self.waiting_for_store,
                "store_waiting_since": self.store_waiting_since}


def lines(reading: Reading, at: float) -> list[Line]:
    """The figures of every submission in the reading, as of `at`."""
    found = []
    for snapshot in reading.snapshots:
        rate = rate_of(snapshot)
        end = snapshot.updated_at if snapshot.finished and snapshot.updated_at else at
        queue = reading.queues.get(snapshot.queue)
        in_progress = min(queue.in_progress, snapshot.pending) if queue else 0
        unserved = queue is not None and queue.unserved and snapshot.pending > 0
        found.append(Line(snapshot, rate, end - snapshot.created_at, eta_of(snapshot, rate, at), in_progress,
                          queue.workers if queue else 0, snapshot.model if unserved else None,
                          queue.waiting_for_store if queue else 0, queue.store_waiting_since if queue else None))
    return found
