"""Bearer-token auth for ``/v1/*`` when ``PRIMER_GATEWAY_TOKEN`` is set (from a Secret).

The check runs in :mod:`services.gateway.guard`, before a request's body is read; the routes
only declare the scheme, so the OpenAPI spec says what the server does.
"""

from __future__ import annotations

import hmac

from fastapi.security import HTTPBearer

#: Declared on the routes when auth is on (documentation; ``guard`` enforces it).
bearer_scheme = HTTPBearer(auto_error=False, description="PRIMER_GATEWAY_TOKEN, when auth "
                           "is on.")


def token_error(authorization: str | None, token: str | None) -> str | None:
    """Why a request with this ``Authorization`` header is refused; None when admitted."""
    if token is None:
        return None
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return ("missing bearer token: send the header "
                "'Authorization: Bearer <PRIMER_GATEWAY_TOKEN>'")
    if not hmac.compare_digest(credentials.strip().encode(), token.encode()):
        return "wrong bearer token"
    return None
