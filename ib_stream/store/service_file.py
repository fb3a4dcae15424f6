"""The service announcement of a data root (store): `.service.json` names the URL and pid of the `ib-stream serve`
that holds the data root, so a command that finds the root locked (`backfill`) knows whom to ask.

The file belongs to the process it names: only that process writes it (while it holds the data-root lock) and
only that process removes it — a second `serve` refused on a locked root, or one that shuts down after another
took over, never touches the running service's announcement. A file left by a killed service is ignored
(its pid is gone).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import orjson

from ib_stream.settings import StorageConfig
from ib_stream.store.layout import Layout, temp_path


def announce_service(config: StorageConfig, host: str, port: int) -> None:
    """Write this process's URL and pid into the data root (atomically: a reader sees the old or the new file)."""
    path = Layout.of(config).service_file
    path.parent.mkdir(parents=True, exist_ok=True)
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    client_host = f"[{client_host}]" if ":" in client_host else client_host  # an IPv6 address
    temp = temp_path(path)
    temp.write_bytes(orjson.dumps({"url": f"http://{client_host}:{port}", "pid": os.getpid()}))
    temp.replace(path)


def withdraw_service(config: StorageConfig) -> bool:
    """Remove the announcement if it names this process; leave another process's alone. True when removed."""
    announced = _announced(config)
    if announced is None or announced[1] != os.getpid():
        return False
    Layout.of(config).service_file.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def service_announced(config: StorageConfig, host: str, port: int) -> Iterator[None]:
    """Announce this process while the block runs, then withdraw the announcement (only if still its own)."""
    announce_service(config, host, port)
    try:
        yield
    finally:
        withdraw_service(config)


def announced_service_url(config: StorageConfig) -> str | None:
    """The URL of the service announced in the data root, when its process still runs; else None."""
    announced = _announced(config)
    if announced is None:
        return None
    url, pid = announced
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return url


def _announced(config: StorageConfig) -> tuple[str, int] | None:
    try:
        announced = orjson.loads(Layout.of(config).service_file.read_bytes())
        return str(announced["url"]), int(announced["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
