"""Shared pieces of the `ib-stream` commands: global options, settings, errors as exit codes, tables, progress."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from ib_stream.errors import (
    ConfigError,
    DataRootLockedError,
    IbStreamError,
    QueryError,
    ValidationError,
)
from ib_stream.settings import Settings, StorageConfig, load_settings
from ib_stream.store.index import PartitionIndex
from ib_stream.store.layout import Layout, temp_path


def exit_code_for(error: type[IbStreamError]) -> int:
    """The process exit code of an error class: 2 for bad input, configuration or a locked root, else 1."""
    return 2 if issubclass(error, ConfigError | ValidationError | QueryError | DataRootLockedError) else 1


class RootGroup(TyperGroup):
    """The root command group; the one place where expected errors become messages and exit codes."""

    def invoke(self, ctx: Any) -> Any:  # a click Context; typer keeps its click private
        try:
            return super().invoke(ctx)
        except IbStreamError as e:
            typer.echo(f"error: {e.message}", err=True)
            raise typer.Exit(exit_code_for(type(e))) from None


@dataclass(frozen=True, slots=True)
class GlobalOptions:
    config_file: Path | None
    data_dir: Path | None


def settings(ctx: typer.Context) -> Settings:
    """The settings of this invocation (--config)."""
    options: GlobalOptions = ctx.find_root().obj
    return load_settings(options.config_file)


def storage_config(ctx: typer.Context, create: bool = False) -> StorageConfig:
    """The storage settings of this invocation (--config, --data-dir); the data root must exist unless `create`
    (commands that write, like imports, start a new data root)."""
    options: GlobalOptions = ctx.find_root().obj
    config = settings(ctx).storage
    if options.data_dir is not None:
        # Applied after loading, so the option also wins over IB_STREAM_STORAGE__DATA_ROOT.
        config = StorageConfig.model_validate({**config.model_dump(), "data_root": options.data_dir})
    if create:
        config.data_root.mkdir(parents=True, exist_ok=True)
    if not config.data_root.is_dir():
        raise ConfigError(
            f"data root {config.data_root} does not exist (use --data-dir or set storage.data_root)",
            details={"data_root": str(config.data_root)},
        )
    return config


def require_catalog(config: StorageConfig) -> None:
    if not config.index_file.is_file():
        raise ConfigError(
            f"no catalog at {config.index_file}: is the data root {config.data_root} right, and has data been stored?",
            details={"path": str(config.index_file)},
        )


def catalogued_files(config: StorageConfig) -> int:
    index = PartitionIndex(config.index_file, readonly=True)
    try:
        return len(index.files())
    finally:
        index.close()


def table(title: str | None, *columns: str) -> Table:
    return Table(*columns, title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)


def print_tables(*tables: Table) -> Console:
    """Print tables at their natural width: a narrow terminal wraps long lines instead of cells turning into "…"."""
    console = out()
    for shown in tables:
        for column in shown.columns:
            column.no_wrap = True
        console.width = max(console.width, console.measure(shown, options=console.options.update_width(10_000)).maximum)
        console.print(shown)
    return console


def out() -> Console:
    # Built per call so it follows the current stdout and terminal width (tests swap both).
    # No markup: a "[...]" in a path, a tick field or an error detail is printed as it is.
    return Console(highlight=False, markup=False)


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Show a progress bar on stderr (nothing when stderr is not a terminal); yield `advance(n)`."""
    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


@contextlib.contextmanager
def announce_service(config: StorageConfig, host: str, port: int) -> Iterator[None]:
    """Write the service's URL and pid into the data root while it runs, so commands that find the data root
    locked (`backfill`) know whom to ask; a file left by a killed service is ignored (its pid is gone)."""
    path = Layout.of(config).service_file
    path.parent.mkdir(parents=True, exist_ok=True)
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    client_host = f"[{client_host}]" if ":" in client_host else client_host  # an IPv6 address
    temp = temp_path(path)
    temp.write_bytes(orjson.dumps({"url": f"http://{client_host}:{port}", "pid": os.getpid()}))
    temp.replace(path)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def announced_service_url(config: StorageConfig) -> str | None:
    """The URL `announce_service` wrote, when its process still runs; else None."""
    try:
        announced = orjson.loads(Layout.of(config).service_file.read_bytes())
        url, pid = str(announced["url"]), int(announced["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return url
