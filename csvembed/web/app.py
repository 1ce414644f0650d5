"""create_app: the routes, the token gate and the one mapping from CsvembedError to an HTTP status."""

from __future__ import annotations

from importlib.metadata import version

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from csvembed import defaults
from csvembed.api import Csvembed
from csvembed.errors import CsvembedError, NoStore, ServiceUnavailable, UnknownSubmission
from csvembed.redact import mask_secrets
from csvembed.web import dashboard, deployment, events, exports, metrics, search, submissions, uploads
from csvembed.web.auth import LoopbackGate, TokenGate
from csvembed.web.deps import Limits
from csvembed.webhooks import PrivateTarget


def status_of(error: CsvembedError) -> int:
    """404 for what is not there, 503 for Redis or the store, 422 for a webhook this server may not send,
    400 for the rest of the user's input."""
    if isinstance(error, (UnknownSubmission, NoStore)):
        return 404
    if isinstance(error, PrivateTarget):
        return 422
    if isinstance(error, ServiceUnavailable):
        return 503
    return 400


def create_app(api: Csvembed, token: str | None = None, max_upload: int = defaults.MAX_UPLOAD,
               interval: float = defaults.EVENTS_INTERVAL,
               read_timeout: float = defaults.UPLOAD_READ_TIMEOUT, private_webhooks: bool = False) -> FastAPI:
    """The app over one deployment; with a token, every route but /healthz asks for it, without one only
    loopback names are served (LoopbackGate). Its submissions' webhooks reach public addresses only, unless
    private_webhooks."""
    app = FastAPI(title="csvembed", version=version("csvembed"),
                  summary="Submit CSV rows for embedding, follow them, search and export what is stored.")
    app.state.api = api
    app.state.limits = Limits(max_upload, interval, read_timeout, private_webhooks)
    for module in (uploads, submissions, exports, events, search, deployment, metrics):
        app.include_router(module.router)
    app.include_router(dashboard.router)

    @app.exception_handler(CsvembedError)
    async def csvembed_error(_: Request, exc: CsvembedError) -> JSONResponse:
        return JSONResponse({"detail": mask_secrets(str(exc))}, status_code=status_of(exc))

    @app.exception_handler(redis.RedisError)
    async def redis_error(_: Request, exc: redis.RedisError) -> JSONResponse:
        lost = "lost the connection to Redis" if isinstance(exc, redis.ConnectionError) else "Redis"
        return JSONResponse({"detail": mask_secrets(f"{lost}: {exc}")}, status_code=503)

    if token:
        app.add_middleware(TokenGate, token=token)
    else:
        app.add_middleware(LoopbackGate)
    return app
