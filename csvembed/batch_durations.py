"""How long workers' batches take, per queue, as a histogram in Redis for /metrics.

A worker adds each batch in the pipeline that finishes it: one bucket (not cumulative, so one
HINCRBY), the sum and the count in a hash per queue. Reading sums the buckets up into Prometheus'
cumulative ones. The hashes never expire: a few fields per queue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from csvembed.submissions import PREFIX

# Seconds: a GPU batch takes a fraction of a second, a 256-row CPU batch of long text a minute.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf)


def key(queue: str) -> str:
    return f"{PREFIX}:batch_seconds:{queue}"


def _bucket(seconds: float) -> str:
    return _label(next(bound for bound in BUCKETS if seconds <= bound))


def _label(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


def record(pipe: Pipeline, queue: str, seconds: float) -> None:
    pipe.hincrby(key(queue), _bucket(seconds), 1)
    pipe.hincrbyfloat(key(queue), "sum", seconds)
    pipe.hincrby(key(queue), "count", 1)


@dataclass
class Durations:
    """One queue's histogram: (upper bound label, batches at most that long) cumulative, sum and count."""

    buckets: list[tuple[str, int]]
    sum: float
    count: int


def read(connection: redis.Redis, queues: list[str]) -> dict[str, Durations]:
    """The histograms of the queues that ever finished a batch, in one round trip."""
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.hgetall(key(queue))
        replies = pipe.execute()
    found = {}
    for queue, raw in zip(queues, replies):
        if not raw:
            continue
        fields = {name.decode(): value for name, value in raw.items()}
        running, buckets = 0, []
        for bound in BUCKETS:
            running += int(fields.get(_label(bound), 0))
            buckets.append((_label(bound), running))
        found[queue] = Durations(buckets, float(fields.get("sum", 0)), int(fields.get("count", 0)))
    return found
