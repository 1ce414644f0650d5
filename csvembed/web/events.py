"""Server-sent events: a snapshot of the whole deployment for the dashboard, and one submission's
status until it is finished.

Redis is read in a worker thread (asyncio.to_thread): a blocking call on the event loop would stall
every other stream and request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from csvembed.api import Csvembed
from csvembed.errors import UnknownSubmission
from csvembed.web.deps import Api, ServerLimits

# The dashboard's snapshot: the newest submissions, and the newest failures of each that has some.
SNAPSHOT_SUBMISSIONS = 20
SNAPSHOT_FAILURES = 5
# Proxies (nginx) buffer responses unless told otherwise; an event must reach the browser at once.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

router = APIRouter(tags=["events"])


def event(name: str, data: object) -> bytes:
    """One server-sent event: its name and one line of JSON."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def snapshot(api: Csvembed) -> dict:
    """The /events payload, the contract the dashboard codes against:
    {at, submissions: [status], queues: [{name, waiting, in_progress, workers}], workers: [worker],
    failures: {submission id: [recent failures, newest first]}}."""
    lines = api.statuses(api.recent(SNAPSHOT_SUBMISSIONS))
    workers = api.workers()
    names = {line.snapshot.queue for line in lines} | {name for worker in workers for name in worker.queues}
    return {
        "at": time.time(),
        "submissions": [line.as_json() for line in lines],
        "queues": [vars(stats) for stats in api.queues(sorted(names))],
        "workers": [worker.as_json() for worker in workers],
        "failures": {line.snapshot.id: api.recent_failures(line.snapshot.id, SNAPSHOT_FAILURES)
                     for line in lines if line.snapshot.failed},
    }


@router.get("/events", summary="A snapshot of every recent submission, queue and worker, every interval")
async def deployment_events(api: Api, limits: ServerLimits) -> StreamingResponse:
    async def stream() -> AsyncIterator[bytes]:
        while True:
            yield event("snapshot", await asyncio.to_thread(snapshot, api))
            await asyncio.sleep(limits.interval)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=STREAM_HEADERS)


@router.get("/submissions/{submission_id}/events", summary="The submission's status every interval, until it ends")
async def submission_events(submission_id: str, api: Api, limits: ServerLimits) -> StreamingResponse:
    first = await asyncio.to_thread(api.status, submission_id)  # an unknown id is a 404, not an empty stream

    async def stream() -> AsyncIterator[bytes]:
        line = first
        while not line.snapshot.finished:
            yield event("status", line.as_json())
            await asyncio.sleep(limits.interval)
            try:
                line = await asyncio.to_thread(api.status, submission_id)
            except UnknownSubmission as exc:  # deleted while followed
                yield event("error", {"detail": str(exc)})
                return
        yield event("end", line.as_json())

    return StreamingResponse(stream(), media_type="text/event-stream", headers=STREAM_HEADERS)
