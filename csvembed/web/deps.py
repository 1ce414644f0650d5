"""What every route is handed: the deployment's facade and the server's limits, kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from csvembed.api import Csvembed


@dataclass(frozen=True)
class Limits:
    """The server's knobs, from `csvembed serve` flags."""

    max_upload: int
    interval: float
    read_timeout: float
    # --allow-private-webhooks: submissions made here may notify private addresses too.
    private_webhooks: bool = False


def api_of(request: Request) -> Csvembed:
    return request.app.state.api


def limits_of(request: Request) -> Limits:
    return request.app.state.limits


Api = Annotated[Csvembed, Depends(api_of)]
ServerLimits = Annotated[Limits, Depends(limits_of)]
