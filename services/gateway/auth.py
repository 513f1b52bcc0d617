"""Bearer-token auth for ``/v1/*`` when ``PRIMER_GATEWAY_TOKEN`` is set (from a Secret)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="PRIMER_GATEWAY_TOKEN, when auth is on.")


def bearer_auth(token: str | None):
    """A dependency that admits every request (``token`` None) or only the right token."""

    async def check(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                           Security(_bearer)]) -> None:
        if token is None:
            return
        if credentials is None:
            raise HTTPException(401, "missing bearer token: send the header "
                                "'Authorization: Bearer <PRIMER_GATEWAY_TOKEN>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return check
