"""The dashboard (issue 13): `GET /` serves one page that draws itself from `GET /events`.

The page is three static files shipped as package data (csvembed/web/static/). Nothing from the
request names a file: `/static/{name}` looks the name up in a fixed allow-list, so a path such as
`../pyproject.toml` is simply not in it. The CSP allows only this origin and no inline script, so
that row text and failure reasons (user data, drawn with textContent) can never run as code.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

STATIC = files("csvembed.web") / "static"
PAGE = "dashboard.html"
# name -> media type: the only files /static serves.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The page and its files hold no data: the token gate lets them through (csvembed/web/auth.py).
PUBLIC_PATHS = frozenset({"/", *(f"/static/{name}" for name in ASSETS)})
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page URL may carry ?token=
    "Cache-Control": "no-cache",  # a new release's page and scripts are picked up at once
}

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    return HTMLResponse(read_static(PAGE), headers=SECURITY_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
def static_file(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail="Not Found")
    return Response(read_static(name), media_type=media_type, headers=SECURITY_HEADERS)


def read_static(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")
