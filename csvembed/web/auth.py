"""The bearer token: an ASGI gate in front of every route but /healthz, the SSE streams included.

A browser's EventSource cannot set headers, so `?token=` is accepted too. Both are compared in
constant time; the token is never logged (the server runs without an access log).
Without a token (loopback only), LoopbackGate keeps out the web pages the user's browser opens.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import parse_qs, urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from csvembed.web.dashboard import PUBLIC_PATHS

# A load balancer's probe must work without the token, and so must the dashboard's page and files: they
# hold no data (the page reads /events, which asks for the token, and says so when it is refused).
OPEN_PATHS = frozenset({"/healthz", *PUBLIC_PATHS})


class TokenGate:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._allowed(scope):
            refusal = JSONResponse({"detail": "a valid token is required: send Authorization: Bearer TOKEN"},
                                   status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        authorization = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            # Parsed as text: parse_qs on bytes re-encodes what it unquotes as ASCII, and %E9 raised.
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = query.get("token", [""])[0].encode()
        return hmac.compare_digest(given.strip(), self.token)


REFUSED_HOST = ("refused: without a token this server answers only requests addressed to localhost, 127.0.0.1"
                " or [::1], from no other origin (set CSVEMBED_TOKEN to serve others)")


class LoopbackGate:
    """Without a token, a web page in the user's browser is who must be kept out: a cross-site form may POST
    to the server unasked (browsers send it without a preflight, with an Origin), and a page whose name is
    rebound to 127.0.0.1 (DNS rebinding) may read it as its own origin (with its own name as Host). So only
    requests addressed to a loopback name, and from no other origin, are answered, /healthz included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            host = headers.get(b"host", b"").decode("latin-1")
            origin = headers.get(b"origin")
            if not _is_loopback(host) or (origin is not None and urlsplit(origin.decode("latin-1")).netloc != host):
                await JSONResponse({"detail": REFUSED_HOST}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_loopback(host: str) -> bool:
    """Whether a Host header (name or address, with or without a port) names this machine's loopback."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:  # an unclosed [ or a port that is not a number
        return False
    if not name:
        return False
    if name == "localhost" or name.endswith(".localhost"):  # loopback by definition (RFC 6761)
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
