"""The guard in front of every HTTP request: what a request may cost before any route sees it.

- A request that writes (any method but GET, HEAD and OPTIONS) must carry the bearer token, checked
  from the headers before a byte of the body is read: a client without it gets its 401/403 at once,
  whatever it sends.
- A request body is limited to api.max_body_mb while it streams in: a Content-Length past the limit,
  or a body that grows past it, gets 413 without being buffered.
- The guard alone reads the connection (`receive`): it hands the routes the body and, when the client
  goes away, sets the request's cancel flag (`ib_stream.budget`), so the work done for it stops at its
  next check instead of holding a worker.

WebSocket and lifespan traffic pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ib_stream.api.auth import token_problem
from ib_stream.api.errors import error_response
from ib_stream.budget import request_cancel_flag_bound
from ib_stream.errors import IbStreamError
from ib_stream.settings import Settings

READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/health", "/ready"})  # probes answer without a token whatever the settings


class PayloadTooLargeError(IbStreamError):
    code = "PAYLOAD_TOO_LARGE"
    http_status = 413


class RequestGuard:
    """ASGI middleware: token before body, bounded body, the client's departure noticed (see the module)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.max_body = int(settings.api.max_body_mb * 1024 * 1024)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in READ_ONLY_METHODS:
            problem = self._refusal(scope)
            body = await self._read_body(receive) if problem is None else problem
            if isinstance(body, IbStreamError):  # the body is not (all) read: answer and close the connection
                await self._refuse(body, scope, receive, send, close=True)
                return
            first: Message = {"type": "http.request", "body": body, "more_body": False}
        else:
            problem = self._read_refusal(scope)
            if problem is not None:
                await self._refuse(problem, scope, receive, send)
                return
            first = await receive()  # a read-only request's (empty) body
        cancelled = threading.Event()
        with request_cancel_flag_bound(cancelled):
            async with _watching(receive, cancelled, first) as app_receive:
                await self.app(scope, app_receive, send)

    async def _refuse(
        self, problem: IbStreamError, scope: Scope, receive: Receive, send: Send, close: bool = False
    ) -> None:
        headers = {"Connection": "close"} if close else None
        response = error_response(
            scope.get("app"), problem.code, problem.to_dict(), problem.http_status, headers=headers
        )
        await response(scope, receive, send)

    def _read_refusal(self, scope: Scope) -> IbStreamError | None:
        """With api.read_token_required, a read needs the token too (not the probes /health and /ready)."""
        if not self.settings.api.read_token_required or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            return None
        return token_problem(self.settings, _text(dict(scope["headers"]).get(b"authorization")))

    def _refusal(self, scope: Scope) -> IbStreamError | None:
        headers = dict(scope["headers"])
        problem = token_problem(self.settings, _text(headers.get(b"authorization")))
        if problem is not None:
            return problem
        length = _text(headers.get(b"content-length"))
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            return self._too_large(int(length))
        return None

    async def _read_body(self, receive: Receive) -> bytes | IbStreamError:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return self._too_large(size, streamed=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: int, streamed: bool = False) -> PayloadTooLargeError:
        limit_mb = self.settings.api.max_body_mb
        what = f"more than {size} bytes arrived" if streamed else f"Content-Length {size}"
        return PayloadTooLargeError(
            f"request body too large: {what}; at most {limit_mb:g} MB (api.max_body_mb) — send smaller batches",
            details={"field": "body", "limit_bytes": self.max_body, "setting": "api.max_body_mb"},
        )


@contextlib.asynccontextmanager
async def _watching(receive: Receive, cancelled: threading.Event, first: Message) -> AsyncIterator[Receive]:
    """A `receive` for the app fed by one reader of the connection, which sets `cancelled` on disconnect."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    inbox.put_nowait(first)

    async def pump() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                cancelled.set()
                inbox.put_nowait(message)
                return
            inbox.put_nowait(message)

    async def app_receive() -> Message:
        return await inbox.get()

    reader = asyncio.create_task(pump())
    try:
        yield app_receive
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def install(app: Any, settings: Settings) -> None:
    """Put the guard in front of the app, and outside it CORS headers for the origins of api.cors_origins (none by
    default: browsers on other origins are refused) so that a preflight and a refusal carry them too."""
    app.add_middleware(RequestGuard, settings=settings)
    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.api.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
