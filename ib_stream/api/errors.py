"""The one place errors become HTTP responses: `{"error": {"code", "message", "details"}}`.

Each error class carries its status (`IbStreamError.http_status`); a storage write error (507 `STORAGE_FULL`,
503 `STORAGE_ERROR` from a failed write) also tells the client when to retry (`Retry-After`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ib_stream.api.responses import OrjsonResponse
from ib_stream.errors import IbStreamError, StorageWriteError, excerpt

log = logging.getLogger(__name__)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(scope_app: Any, code: str, body: dict[str, Any], status: int, **kwargs: Any) -> OrjsonResponse:
    """The JSON error response, counted in the service's metrics (`ib_stream_http_errors_total{code,status}`)."""
    service = getattr(getattr(scope_app, "state", None), "service", None)
    if service is not None:
        service.metrics.count_error(code, status)
    return OrjsonResponse(body, status_code=status, **kwargs)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into the JSON error shape."""

    @app.exception_handler(IbStreamError)
    async def _package_error(request: Request, exc: IbStreamError) -> OrjsonResponse:
        status = exc.http_status if exc.http_status < 500 or exc.code != IbStreamError.code else 500
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        headers = None
        if isinstance(exc, StorageWriteError):
            headers = {"Retry-After": str(max(1, math.ceil(float(exc.details.get("retry_after_seconds") or 1))))}
        return error_response(request.app, exc.code, exc.to_dict(), status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> OrjsonResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("request",), "msg": "invalid request"}
        location = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "header")]
        field = ".".join(location) or "request"
        value = first.get("input")
        plain = isinstance(value, int | float | bool) and -(2**63) <= value < 2**64
        shown = value if plain or value is None else excerpt(value)  # never the whole input back
        message = (
            f"{field} {excerpt(shown if plain else repr(shown))} is invalid: {first.get('msg', 'invalid')}"
            if value is not None
            else f"{field} is invalid: {first.get('msg')}"
        )
        body = error_body("INVALID_INPUT", message, {"field": field, "value": shown, "errors": _plain(exc.errors())})
        return error_response(request.app, "INVALID_INPUT", body, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> OrjsonResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 401: "UNAUTHORIZED", 403: "FORBIDDEN"}.get(
            exc.status_code, "HTTP_ERROR"
        )
        body = error_body(code, str(exc.detail), {"path": request.url.path})
        return error_response(request.app, code, body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> OrjsonResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request.app, "INTERNAL_ERROR", error_body("INTERNAL_ERROR", "internal server error"), 500)


def _plain(errors: Any) -> list[dict[str, Any]]:
    plain = []
    for error in errors:
        plain.append({"loc": [excerpt(p, 80) for p in error.get("loc", ())], "msg": excerpt(error.get("msg", ""))})
    return plain
