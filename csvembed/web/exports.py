"""GET /submissions/{id}/export: the stored rows with their vectors, streamed as the exporter writes them.

check_export raises every error a 4xx can still carry; then export() runs in a thread of its own,
writing into a bounded queue that the response drains, so memory holds a few chunks, not the file.
"""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import threading
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from csvembed.api import Csvembed
from csvembed.redact import mask_secrets
from csvembed.web.deps import Api

log = logging.getLogger(__name__)

CONTENT_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8",
                 "parquet": "application/vnd.apache.parquet"}
# The exporter's small writes are gathered into chunks this big; this many chunks may wait to be sent.
CHUNK_BYTES = 64 * 1024
QUEUED_CHUNKS = 16
# How often a writer blocked on a full queue looks whether the client went away.
GONE_CHECK_SECONDS = 0.5

router = APIRouter(tags=["submissions"])


class _Pipe(io.RawIOBase):
    """The exporter's target: each write becomes a queued chunk; a write after the client left raises."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[bytes | None] = queue.Queue(QUEUED_CHUNKS)
        self.abandoned = threading.Event()
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        chunk = bytes(data)
        while True:
            if self.abandoned.is_set():
                raise BrokenPipeError("the client went away")
            try:
                self.chunks.put(chunk, timeout=GONE_CHECK_SECONDS)
                self.written += len(chunk)
                return len(chunk)
            except queue.Full:
                continue

    def close_stream(self) -> None:
        """Tell the response the export ended. A full queue that the client left needs no end: nobody waits."""
        while True:
            try:
                self.chunks.put(None, timeout=GONE_CHECK_SECONDS)
                return
            except queue.Full:
                if self.abandoned.is_set():
                    return

    def tell(self) -> int:  # pyarrow asks where it is
        return self.written


def _export(api: Csvembed, submission_id: str, fmt: str, windows: bool, pipe: _Pipe) -> None:
    try:
        with io.BufferedWriter(pipe, CHUNK_BYTES) as target:
            api.export(submission_id, fmt, target, windows=windows)  # type: ignore[arg-type]
    except BrokenPipeError:
        pass
    except Exception as exc:  # the status line is sent: all that is left is to end the body short
        log.warning("export of %s stopped: %s", submission_id, mask_secrets(str(exc)))
    finally:
        pipe.close_stream()


@router.get("/submissions/{submission_id}/export", response_class=StreamingResponse,
            summary="The stored rows (or windows) with their vectors, in row order: jsonl, csv or parquet")
async def export(submission_id: str, api: Api, format: str = "jsonl", windows: bool = False) -> StreamingResponse:
    await asyncio.to_thread(api.check_export, submission_id, format)
    pipe = _Pipe()
    threading.Thread(target=_export, args=(api, submission_id, format, windows, pipe), daemon=True,
                     name=f"export-{submission_id}").start()

    async def body() -> AsyncIterator[bytes]:
        try:
            while (chunk := await asyncio.to_thread(pipe.chunks.get)) is not None:
                yield chunk
        finally:
            pipe.abandoned.set()

    suffix = "-windows" if windows else ""
    return StreamingResponse(body(), media_type=CONTENT_TYPES[format], headers={
        "Content-Disposition": f'attachment; filename="{submission_id}{suffix}.{format}"'})
