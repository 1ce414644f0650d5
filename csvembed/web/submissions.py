"""Submissions as resources: their status (exactly `status --json`), failures, retry and delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from csvembed.defaults import REDIS_MAX_INT
from csvembed.web.deps import Api

router = APIRouter(prefix="/submissions", tags=["submissions"])


@router.get("", summary="The recent submissions' status, newest first")
def recent(api: Api, limit: Annotated[int, Query(ge=1, le=REDIS_MAX_INT)] = 10) -> list[dict]:
    return [line.as_json() for line in api.statuses(api.recent(limit))]


@router.get("/{submission_id}", summary="One submission's status, exactly as `csvembed status ID --json`")
def status(submission_id: str, api: Api) -> dict:
    return api.status(submission_id).as_json()


@router.get("/{submission_id}/failures", summary="Rows that failed for good: {row_number, id, reason, permanent}")
def failures(submission_id: str, api: Api) -> list[dict]:
    return api.failures(submission_id)


@router.post("/{submission_id}/retry", summary="Requeue failed rows; permanent failures too with all=true")
def retry(submission_id: str, api: Api, all: bool = False) -> dict:
    return vars(api.retry(submission_id, include_permanent=all))


@router.delete("/{submission_id}", summary="Remove the submission: stored rows, queued or failed jobs, records")
def delete(submission_id: str, api: Api) -> dict:
    return vars(api.delete(submission_id))
