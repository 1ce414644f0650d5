"""serve: the HTTP API (csvembed/web) under uvicorn, over the deployment the global options name."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Optional

import typer

from csvembed import defaults
from csvembed.cli.app import api_of, app, say
from csvembed.errors import InputError
from csvembed.redact import mask_secrets

ENV_TOKEN = "CSVEMBED_TOKEN"
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from `1048576`, `500M` or `2G` (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match or int(match[1]) == 0:
        raise InputError(f"--max-upload takes a size such as 500M or 2G, not {text!r}")
    return int(match[1]) * SIZE_UNITS[match[2].upper()]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


@app.command(short_help="Serve the HTTP API, live dashboard and metrics.")
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(
        metavar="ADDRESS", help="Address to listen on. Any but loopback needs --token.")] = defaults.SERVE_HOST,
    # Not 0: uvicorn would bind a free port, but the line below could only say :0.
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = defaults.SERVE_PORT,
    token: Annotated[Optional[str], typer.Option(
        metavar="TOKEN", envvar=ENV_TOKEN, show_envvar=True,
        help="Require `Authorization: Bearer TOKEN` (or ?token=TOKEN) on every route but /healthz. Prefer the "
        "environment variable: a flag shows in the process list.")] = None,
    max_upload: Annotated[str, typer.Option(
        metavar="SIZE", help="Largest upload accepted, e.g. 500M or 2G; larger ones get 413.")] = "2G",
    interval: Annotated[float, typer.Option(
        metavar="SECONDS", help="Seconds between server-sent events.", min=0.05)] = defaults.EVENTS_INTERVAL,
    allow_private_webhooks: Annotated[bool, typer.Option(
        "--allow-private-webhooks",
        help="Let submissions made over HTTP notify private, loopback and link-local addresses (internal "
        "receivers). Off by default: anyone with the token could make csvembed's hosts probe their network.")] = False,
) -> None:
    """Serve the HTTP API of this deployment (its Redis, store and model) until Ctrl-C.

    It binds 127.0.0.1 unless --host says otherwise; any other address refuses to start without a token.
    The routes are listed at /docs and /openapi.json. Webhooks (notify) of submissions made over HTTP reach
    public addresses only, unless --allow-private-webhooks.
    """
    if not token and not is_loopback(host):
        raise InputError(f"--host {host} can be reached from other machines: set a token first"
                         f" (--token or {ENV_TOKEN})")
    limit = parse_size(max_upload)
    import uvicorn

    from csvembed.web.app import create_app

    api = api_of(ctx)
    api.connection.ping()  # an unreachable Redis is one line now, not a 503 on every request
    say(f"serving {mask_secrets(api.settings.redis_url or 'the embedded Redis')} and {mask_secrets(api.settings.db)}"
        f" on http://{host}:{port} ({'token required' if token else 'no token'}); Ctrl-C stops")
    # Webhooks of finished submissions go out even while no worker runs (the workers deliver them too).
    deliverer = api.deliver_webhooks()
    try:
        # No access log: it would show ?token= query strings.
        uvicorn.run(create_app(api, token=token, max_upload=limit, interval=interval,
                               private_webhooks=allow_private_webhooks), host=host, port=port,
                    access_log=False, log_level="warning", timeout_keep_alive=defaults.KEEP_ALIVE_TIMEOUT,
                    limit_concurrency=defaults.MAX_CONNECTIONS)
    finally:
        deliverer.stop()
