"""The bearer token: an ASGI gate in front of every route but /healthz, the SSE streams included.

A browser's EventSource cannot set headers, so `?token=` is accepted too. Both are compared in
constant time; the token is never logged (the server runs without an access log).
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

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
