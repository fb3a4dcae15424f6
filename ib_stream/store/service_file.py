"""The service announcement of a data root (store): `.service.json` names the URL and pid of the `ib-stream serve`
that holds the data root, so a command that finds the root locked (`backfill`) knows whom to ask.

The file belongs to the process it names: only that process writes it (while it holds the data-root lock) and
only that process removes it — a second `serve` refused on a locked root, or one that shuts down after another
took over, never touches the running service's announcement. A file left by a killed service is ignored
(its pid is gone).

Each running service is also listed in the user's state directory (`$XDG_STATE_HOME/ib-stream/services/`,
default `~/.local/state/...`), so that `StorageQuery()` in a notebook finds the data root the service records
into even when it was started with `--data-dir` (`running_services`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import orjson

from ib_stream.errors import StorageError
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
    with contextlib.suppress(OSError):  # a read-only home: the service runs, notebooks need the data root named
        entry = _registry_dir() / f"{os.getpid()}.json"
        entry.parent.mkdir(parents=True, exist_ok=True)
        record = {"url": f"http://{client_host}:{port}", "pid": os.getpid(), "data_root": str(path.parent.resolve())}
        record["index_file"] = str(Path(config.index_file).resolve())
        temp = temp_path(entry)
        temp.write_bytes(orjson.dumps(record))
        temp.replace(entry)


def withdraw_service(config: StorageConfig) -> bool:
    """Remove the announcement if it names this process; leave another process's alone. True when removed."""
    with contextlib.suppress(OSError):
        (_registry_dir() / f"{os.getpid()}.json").unlink(missing_ok=True)
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
    return url if _alive(pid) else None


def running_services() -> list[dict[str, str | int]]:
    """The services of this user that are running now: url, pid, data_root and index_file of each (entries of
    services that died are removed)."""
    found = []
    for entry in sorted(_registry_dir().glob("*.json")):
        try:
            record = orjson.loads(entry.read_bytes())
            alive = _alive(int(record["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if alive:
            found.append(record)
        else:
            entry.unlink(missing_ok=True)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _registry_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "ib-stream" / "services"


def _announced(config: StorageConfig) -> tuple[str, int] | None:
    try:
        announced = orjson.loads(Layout.of(config).service_file.read_bytes())
        return str(announced["url"]), int(announced["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def data_root_in_use(config: StorageConfig) -> StorageConfig:
    """The data root to read when none was named: `config`'s when it holds a catalog, else that of the one running
    service (started with `--data-dir` elsewhere, say). Several running services elsewhere: StorageError naming
    them. None: `config` as it is (opening it then says how to name one)."""
    if Layout.of(config).index_file.is_file():
        return config
    elsewhere = [s for s in running_services() if Path(str(s.get("index_file", ""))).is_file()]
    if len(elsewhere) == 1:
        found = elsewhere[0]
        return config.model_copy(
            update={"data_root": Path(str(found["data_root"])), "index_path": Path(str(found["index_file"]))}
        )
    if len(elsewhere) > 1:
        roots = ", ".join(f"{s['data_root']} ({s['url']})" for s in elsewhere)
        raise StorageError(
            f"no catalog at {Layout.of(config).index_file}, and several ib-stream services are running: {roots}; "
            "name one: StorageQuery(config=StorageConfig(data_root=Path(...))) or IB_STREAM_STORAGE__DATA_ROOT",
            details={"data_roots": [str(s["data_root"]) for s in elsewhere]},
        )
    return config
