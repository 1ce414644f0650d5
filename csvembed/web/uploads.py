"""POST /submissions: a CSV upload, spooled to a private temp file as it arrives, then submitted.

The body never sits in memory: it goes to an unnamed temp file (mode 0600, gone once closed) a chunk
at a time, counted against --max-upload, each chunk within the read timeout. Spooling the whole body
before the first row is read means a 413, a timeout or a dropped connection enqueues nothing. A compressed
upload is decompressed once (and thrown away) before that, against the same limit: a few kilobytes of gzip
can hold gigabytes of rows, and every row would become a job in Redis.
Options are the fields of SubmitOptions, as query or form fields: an option added there is accepted here,
but for those the server sets (SERVER_SET): its webhook reaches public addresses only, unless the server
was started with --allow-private-webhooks (see csvembed/webhooks.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import tempfile
import types
import typing
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import BinaryIO

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from csvembed.errors import InputError
from csvembed.producer import SubmitOptions
from csvembed.reader import Source, open_stream
from csvembed.web.deps import Api, Limits, ServerLimits
from csvembed.webhooks import check_url

# SubmitOptions the server decides and a client never may: one could otherwise lift its own restriction.
SERVER_SET = {"notify_public_only"}
_HINTS = typing.get_type_hints(SubmitOptions)
OPTION_TYPES = {field.name: _HINTS[field.name] for field in dataclasses.fields(SubmitOptions)
                if field.name not in SERVER_SET}
# Query parameters that are not submit options.
NOT_OPTIONS = {"token"}
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}
# A raw body has no file name; like standard input, its collection defaults to stdin-ID.
RAW_BODY_NAME = "<request body>"
# Form fields other than the file: options are short.
MAX_FORM_FIELDS = 100
DECOMPRESS_CHUNK = 1024 * 1024

router = APIRouter(tags=["submissions"])

UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "text/csv": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"},
        **{name: {"type": "string"} for name in OPTION_TYPES}}}},
}}}


@router.post("/submissions", status_code=201, openapi_extra=UPLOAD_BODY,
             summary="Upload a CSV (multipart `file`, or a text/csv body, gzip etc. accepted) and queue its rows",
             description="Options are SubmitOptions' fields as query or form fields (text_columns repeatable). "
             "Answers `submit --json` with a Location header once every row is queued.")
async def create(request: Request, api: Api, limits: ServerLimits) -> JSONResponse:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_upload:
        raise _too_large(limits)
    fields = [(name, value) for name, value in request.query_params.multi_items() if name not in NOT_OPTIONS]
    if _media_type(request) == "multipart/form-data":
        try:
            form = await MultiPartParser(request.headers, _body(request, limits), max_files=1,
                                         max_fields=MAX_FORM_FIELDS).parse()
        except MultiPartException as exc:
            raise InputError(f"the multipart upload cannot be read: {exc.message}") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InputError("the multipart upload has no `file` field holding the CSV")
            fields += [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
            return await _submit(api, upload.file, _file_name(upload.filename), _options(fields, limits), limits)
        finally:
            await form.close()
    options = _options(fields, limits)  # all in the query: a mistake is told before the body is read
    with tempfile.TemporaryFile() as spool:
        async for chunk in _body(request, limits):
            spool.write(chunk)
        return await _submit(api, spool, None, options, limits)


async def _submit(api: Api, spool: BinaryIO, name: str | None, options: SubmitOptions, limits: Limits) -> JSONResponse:
    spool.seek(0)
    source = open_stream(name or RAW_BODY_NAME, spool, is_stdin=name is None)
    if source.compression:
        await run_in_threadpool(_check_decompressed, source, limits)
        spool.seek(0)
        source = open_stream(name or RAW_BODY_NAME, spool, is_stdin=name is None)
    result = await run_in_threadpool(api.submit, source, options)
    return JSONResponse(result.as_json(), status_code=201, headers={"Location": f"/submissions/{result.id}"})


async def _body(request: Request, limits: Limits) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk: 408 for a chunk that does not come in time, 413 past the limit,
    400 for a client gone before its end (an answer no one reads, where a raise would log a traceback)."""
    chunks = request.stream().__aiter__()
    received = 0
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), limits.read_timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise HTTPException(408, f"no byte of the upload came for {limits.read_timeout:g} s") from None
        except ClientDisconnect:
            raise HTTPException(400, "the client closed the connection before the upload ended:"
                                     " nothing was queued") from None
        received += len(chunk)
        if received > limits.max_upload:
            raise _too_large(limits)
        yield chunk


def _media_type(request: Request) -> str:
    """The Content-Type without its parameters, lowercased: media types are case-insensitive (RFC 9110), and
    a `Multipart/Form-Data` body read as CSV would queue its boundary lines as rows."""
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _check_decompressed(source: Source, limits: Limits) -> None:
    """413 if the decompressed upload is larger than the limit; read a chunk at a time, so memory stays flat."""
    expanded = 0
    while chunk := source.stream.read(DECOMPRESS_CHUNK):
        expanded += len(chunk)
        if expanded > limits.max_upload:
            raise HTTPException(413, f"the upload decompresses to more than the server's limit of {limits.max_upload}"
                                     " bytes (csvembed serve --max-upload)")


def _too_large(limits: Limits) -> HTTPException:
    return HTTPException(413, f"the upload is larger than the server's limit of {limits.max_upload} bytes"
                              " (csvembed serve --max-upload)")


def _file_name(sent: str | None) -> str | None:
    """The client's file name without any folder or control character: it names the collection, never a path."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", PurePosixPath((sent or "").replace("\\", "/")).name)
    return name or None


def _options(fields: list[tuple[str, str]], limits: Limits) -> SubmitOptions:
    """The client's options with the server's webhook restriction; a webhook plainly not allowed is told now."""
    options = dataclasses.replace(options_of(fields), notify_public_only=not limits.private_webhooks)
    if options.notify:
        check_url(options.notify, options.notify_public_only)
    return options


def options_of(fields: list[tuple[str, str]]) -> SubmitOptions:
    """SubmitOptions from (name, value) text fields; a repeated name is a tuple option's items."""
    given: dict[str, list[str]] = defaultdict(list)
    for name, value in fields:
        if name not in OPTION_TYPES:
            raise InputError(f"unknown option {name!r}: use {', '.join(OPTION_TYPES)}")
        given[name].append(value)
    return SubmitOptions(**{name: _typed(name, values) for name, values in given.items()})


def _typed(name: str, values: list[str]) -> object:
    kind = OPTION_TYPES[name]
    if typing.get_origin(kind) in (tuple, list):
        return tuple(values)
    if len(values) > 1:
        raise InputError(f"option {name!r} given {len(values)} times: it takes one value")
    value = values[0]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if kind is bool:
        if value.lower() not in TRUE | FALSE:
            raise InputError(f"option {name!r} takes true or false, not {value!r}")
        return value.lower() in TRUE
    if kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            raise InputError(f"option {name!r} takes a number, not {value!r}") from None
    return value

