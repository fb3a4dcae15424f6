"""`ib-stream serve`: check that the service can start, then run it (uvicorn, the app of `ib_stream.api.app`).

Everything that can refuse the start is checked before the store is opened, before anything is written and before
"serving on" is printed: the host must resolve, the port is bound here (the bound sockets are handed to uvicorn,
so nobody takes the port in between), the contracts file must read, and the data root must be a directory
nobody else holds. An expected error the service still meets while starting (its lifespan: a writer that took the
data root in between, a bad sink setting) ends it with one line too, not uvicorn's traceback.

The announcement `.service.json` is written once the service holds the data root, and removed only while it
still names this process (`ib_stream.store.service_file`): a refused second `serve` never touches the running
service's.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Annotated, Any

import typer
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ib_stream import cli_support as support
from ib_stream.api.app import create_app
from ib_stream.errors import IbStreamError, ValidationError
from ib_stream.settings import Settings, StorageConfig
from ib_stream.store.service_file import announce_service, withdraw_service

_STARTUP_FAILED = "Application startup failed. Exiting."


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="Interface to listen on (default: api.host).")] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="TCP port (default: api.port, 8000).")
    ] = None,
    data_dir: support.DataDirOption = None,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Market-data source: sim, ib or replay (default: the source setting)."),
    ] = None,
) -> None:
    """Run the service: record the live source into the store and serve the HTTP API and live streams."""
    overrides: dict[str, Any] = {}
    root = support.data_root_override(ctx, data_dir)
    if root is not None:
        overrides["storage"] = {"data_root": root}
    api = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if api:
        overrides["api"] = api
    if source is not None:
        overrides["source"] = source
    settings = support.settings(ctx, **overrides)
    sockets = bind(
        settings.api.host,
        settings.api.port,
        host_field="--host" if host is not None else "api.host",
        port_field="--port" if port is not None else "api.port",
    )
    try:
        support.contracts(settings)
        # Last, as it creates a new data root (what the store would do a moment later): nothing is written when
        # another check fails, and a data root in use is left as it is.
        support.check_data_root(settings.storage, create=True)
        with support.writer_lock(settings.storage):
            pass  # free: the service takes it when it opens the store
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        typer.echo(
            f"ib-stream: serving on http://{settings.api.host}:{settings.api.port} "
            f"(data root {settings.storage.data_root})"
        )
        _run(settings, sockets)
    finally:
        for sock in sockets:
            sock.close()


def bind(host: str, port: int, *, host_field: str = "--host", port_field: str = "--port") -> list[socket.socket]:
    """Bind a listening address of `host` on `port` (every address the host resolves to), as uvicorn would."""
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValidationError(
            host_field, host, f"does not resolve to an address ({e.strerror}): give an IP address, e.g. 127.0.0.1"
        ) from e
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does: TIME_WAIT is no obstacle
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as e:
                raise _bind_error(e, host, port, host_field, port_field) from e
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_error(error: OSError, host: str, port: int, host_field: str, port_field: str) -> ValidationError:
    if error.errno == errno.EADDRINUSE:
        return ValidationError(
            port_field, port, f"is in use on {host} by another process: stop it or choose another port (--port)"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return ValidationError(
            host_field, host, "is not an address of this machine: give one of its addresses, e.g. 127.0.0.1"
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return ValidationError(
            port_field, port, f"cannot be bound on {host}: permission denied (ports below 1024 need privileges)"
        )
    return ValidationError(port_field, port, f"cannot be bound on {host}: {error.strerror or error}")


def _run(settings: Settings, sockets: list[socket.socket]) -> None:
    guard = StartupGuard(create_app(settings), settings.storage, settings.api.host, settings.api.port)
    server = uvicorn.Server(
        uvicorn.Config(
            guard,
            host=settings.api.host,
            port=settings.api.port,
            log_level="info",
            ws="websockets-sansio",
            timeout_graceful_shutdown=settings.api.shutdown_timeout_seconds,  # type: ignore[arg-type]
        )
    )
    quiet = _QuietStartupFailure(guard)
    logging.getLogger("uvicorn.error").addFilter(quiet)
    try:
        server.run(sockets=sockets)
    except SystemExit:  # uvicorn's start-up failure (exit 3)
        if guard.error is None:
            raise typer.Exit(1) from None  # unexpected: uvicorn logged its traceback
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)
        withdraw_service(settings.storage)
    if guard.error is not None:
        raise guard.error
    if not server.started:
        raise typer.Exit(1)


class StartupGuard:
    """The app as uvicorn runs it: announces the service once it holds the data root, and keeps an expected
    start-up error (to print as one line) instead of handing uvicorn its traceback."""

    def __init__(self, app: ASGIApp, config: StorageConfig, host: str, port: int) -> None:
        self.app = app
        self.config = config
        self.host = host
        self.port = port
        self.error: IbStreamError | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []
        started = False

        async def relay(message: Message) -> None:
            nonlocal started
            if message["type"] == "lifespan.startup.complete":
                announce_service(self.config, self.host, self.port)  # the store is open: the data root is ours
                started = True
            elif message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent before the error is raised: forwarded once it is known
                return
            await send(message)

        try:
            await self.app(scope, receive, relay)
        except IbStreamError as e:
            self.error = e
        except OSError as e:
            self.error = support.os_error(e)
            self.error.__cause__ = e
        except BaseException:
            for message in held:
                await send(message)  # with the traceback: uvicorn logs it
            raise
        if self.error is None:
            for message in held:
                await send(message)
        elif not started:
            await send({"type": "lifespan.startup.failed", "message": ""})  # uvicorn stops; the error is ours


class _QuietStartupFailure(logging.Filter):
    """Drops uvicorn's "startup failed" line when the guard has the error to print instead."""

    def __init__(self, guard: StartupGuard) -> None:
        super().__init__()
        self.guard = guard

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.guard.error is not None and record.getMessage() == _STARTUP_FAILED)
