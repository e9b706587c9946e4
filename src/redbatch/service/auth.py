"""The bearer token: when one is configured, every mutating route requires it.

Reads (stats, peek, dead-letter lists, health) stay open: they are for dashboards and
probes, and the service binds to 127.0.0.1 unless told otherwise. The token is compared in
constant time (``hmac.compare_digest``), and never logged or echoed.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from redbatch.service.errors import Unauthorized

bearer = HTTPBearer(auto_error=False, description="REDBATCH_API_TOKEN, when the service has one")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    token: SecretStr | None = request.app.state.token
    if token is None:
        return
    if credentials is None:
        raise Unauthorized("this endpoint requires an Authorization: Bearer <token> header")
    expected = token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise Unauthorized("the bearer token is wrong")
