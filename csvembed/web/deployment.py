"""The deployment as a whole: is it up, which workers are live."""

from __future__ import annotations

from fastapi import APIRouter

from csvembed.web.deps import Api

router = APIRouter(tags=["deployment"])


@router.get("/healthz", summary="ok when Redis answers; open without the token, for probes")
def healthz(api: Api) -> dict:
    api.connection.ping()
    return {"status": "ok"}


@router.get("/workers", summary="The live workers, as `csvembed workers --json`")
def workers(api: Api) -> list[dict]:
    return [worker.as_json() for worker in api.workers()]
