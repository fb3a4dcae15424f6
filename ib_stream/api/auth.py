"""The bearer-token guard of the endpoints that write (`POST /v2/ticks`, `POST /v2/contracts/{id}/backfill`)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ib_stream.api.state import State
from ib_stream.errors import IbStreamError
from ib_stream.settings import Settings

bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="The token of setting api.token.")


class AuthenticationError(IbStreamError):
    """The request has no bearer token or a wrong one."""

    code = "UNAUTHORIZED"
    http_status = 401


class IngestDisabledError(IbStreamError):
    """No token is configured, so the endpoints that need one are switched off."""

    code = "INGEST_DISABLED"
    http_status = 403


def token_problem(settings: Settings, header: str | None) -> IbStreamError | None:
    """Why a request with this Authorization header may not write (None: it may)."""
    token = settings.api.token
    expected = token.get_secret_value() if token is not None else ""
    if not expected:
        return IngestDisabledError(
            "this endpoint is disabled: no api.token is configured (set IB_STREAM_API__TOKEN to enable it)",
            details={"setting": "api.token"},
        )
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return AuthenticationError(
            "Authorization header with a bearer token is required", details={"field": "Authorization"}
        )
    if not secrets.compare_digest(credentials.strip().encode("utf-8", "surrogateescape"), expected.encode()):
        return AuthenticationError("bearer token is not valid", details={"field": "Authorization"})
    return None


async def require_token(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Let the request through only with the configured bearer token (`RequestGuard` checks it already,
    before the body is read; this states the need in the OpenAPI schema and guards apps without it)."""
    header = f"Bearer {credentials.credentials}" if credentials is not None else None
    problem = token_problem(state.settings, header)
    if problem is not None:
        raise problem
