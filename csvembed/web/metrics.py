"""GET /metrics: Prometheus text over the facade, from a collector of its own in a fresh registry.

Each scrape reads Redis afresh: the submission records (one pipelined round trip, a fixed number of
calls per submission), the queues, the live workers and the batch-duration histograms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from csvembed.api import Csvembed
from csvembed.web.deps import Api

# Counters summed over records that expire or are deleted: said in every HELP, since they can go down.
RECORDS_NOTE = ("summed over the submission records still in Redis (deleted submissions leave the sum,"
                " so it can go down)")
ROW_COUNTERS = {
    "rows_enqueued": ("Rows queued for embedding (read, less those skipped as unchanged)",
                      lambda snapshot: snapshot.total - snapshot.skipped),
    "rows_done": ("Rows embedded and stored", lambda snapshot: snapshot.done),
    "rows_failed": ("Rows that failed for good", lambda snapshot: snapshot.failed),
    "rows_skipped": ("Rows skipped as unchanged in the store", lambda snapshot: snapshot.skipped),
}

router = APIRouter(tags=["deployment"])


class DeploymentCollector(Collector):
    """Every csvembed_ metric of one deployment, read when scraped."""

    def __init__(self, api: Csvembed) -> None:
        self.api = api

    def collect(self) -> Iterator[Metric]:
        snapshots = self.api.snapshots()
        workers = self.api.workers()
        names = sorted({*self.api.queue_names(), *(s.queue for s in snapshots),
                        *(name for worker in workers for name in worker.queues)})
        for metric, (text, figure) in ROW_COUNTERS.items():
            family = CounterMetricFamily(f"csvembed_{metric}", f"{text}, per queue; {RECORDS_NOTE}.", labels=["queue"])
            totals = Counter({name: 0 for name in names})
            for snapshot in snapshots:
                totals[snapshot.queue] += figure(snapshot)
            for name, total in sorted(totals.items()):
                family.add_metric([name], total)
            yield family
        states = GaugeMetricFamily("csvembed_submissions", "Submissions whose record is still in Redis, by state.",
                                   labels=["state"])
        for state, number in sorted(Counter(snapshot.state for snapshot in snapshots).items()):
            states.add_metric([state], number)
        yield states
        yield from self._queues(names)
        yield GaugeMetricFamily("csvembed_workers_live", "Live workers (heart-beating) on this Redis.",
                                value=len(workers))
        histogram = HistogramMetricFamily("csvembed_batch_duration_seconds",
                                          "Seconds a worker took to embed and store one batch.", labels=["queue"])
        for name, durations in self.api.batch_durations(names).items():
            histogram.add_metric([name], durations.buckets, durations.sum)
        yield histogram

    def _queues(self, names: list[str]) -> Iterator[Metric]:
        stats = self.api.queues(names)
        for metric, text, field in (
            ("csvembed_queue_rows_waiting", "Rows waiting in the queue.", "waiting"),
            ("csvembed_rows_in_progress", "Rows taken by a worker and not finished yet.", "in_progress"),
            ("csvembed_queue_workers", "Live workers listening on the queue.", "workers"),
        ):
            family = GaugeMetricFamily(metric, text, labels=["queue"])
            for queue in stats:
                family.add_metric([queue.name], getattr(queue, field))
            yield family


def registry_of(api: Csvembed) -> CollectorRegistry:
    """A registry of our own: the process's default one would add Python's and uvicorn's metrics."""
    registry = CollectorRegistry()
    registry.register(DeploymentCollector(api))
    return registry


@router.get("/metrics", summary="Prometheus metrics: rows per queue, queue lengths, workers, batch durations",
            response_class=Response)
def metrics(api: Api) -> Response:
    return Response(generate_latest(registry_of(api)), media_type=CONTENT_TYPE_LATEST)
