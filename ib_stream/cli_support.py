"""Shared pieces of the `ib-stream` commands: errors as one line and an exit code, global and shared options
(data root, contract id, time range), settings, the data root's checks, tables and progress bars.

Expected errors end a command in exactly one place, `RootGroup.invoke`: one line `error: <message>` on stderr
and the documented exit code (2 bad input, configuration or a data root in use; 1 a storage failure).
Foreign errors are translated where they arise when the command knows what they mean (`storage_config`,
`require_catalog`, `open_store`, `writer_lock`); whatever of them still reaches the root group (an OSError such as
ENOSPC or EROFS, a damaged SQLite file, an unreadable Parquet file) is translated there, as a last safety net.
Programming errors keep their traceback.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import pandas as pd
import pyarrow as pa
import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from ib_stream.api.params import MAX_CONTRACT_ID
from ib_stream.contracts import load_contracts
from ib_stream.domain import Contract
from ib_stream.errors import (
    ConfigError,
    CorruptFileError,
    DataRootLockedError,
    IbStreamError,
    QueryError,
    StorageError,
    StorageFullError,
    ValidationError,
)
from ib_stream.settings import Settings, StorageConfig, load_settings
from ib_stream.store.catalog_health import catalog_damage, is_damage, is_disk_trouble
from ib_stream.store.index import PartitionIndex
from ib_stream.store.layout import Layout
from ib_stream.store.tickstore import TickStore, lock_data_root
from ib_stream.times import parse_cli_duration, parse_cli_time

REBUILD_HINT = "`ib-stream index rebuild` recreates a damaged catalog from the archive files"


def exit_code_for(error: type[IbStreamError]) -> int:
    """The process exit code of an error class: 2 for bad input, configuration or a locked root, else 1."""
    return 2 if issubclass(error, ConfigError | ValidationError | QueryError | DataRootLockedError) else 1


class RootGroup(TyperGroup):
    """The root command group; the one place where expected errors become one line and an exit code."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except typer.TyperException as e:  # a usage error of the global options
            _usage_error(e)

    def invoke(self, ctx: Any) -> Any:  # a click Context; typer keeps its click private
        try:
            return super().invoke(ctx)
        except IbStreamError as e:
            _fail(e)
        except typer.TyperException as e:  # unknown option, missing argument, bad value of a typed option
            _usage_error(e)
        except (OSError, sqlite3.Error, pa.ArrowException) as e:
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                raise  # the reader went away (`| head`): typer ends quietly
            error = foreign_error(e)
            error.__cause__ = e
            _fail(error)


def _fail(error: IbStreamError) -> NoReturn:
    typer.echo(f"error: {one_line(error.message)}{_hint(error)}", err=True)
    raise typer.Exit(exit_code_for(type(error))) from None


def _usage_error(error: typer.TyperException) -> NoReturn:
    # `ib-stream` or `ib-stream index` without a command shows the help (typer tells it apart by name too).
    if error.__class__.__name__ == "NoArgsIsHelpError":
        raise error
    ctx = getattr(error, "ctx", None)
    see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    typer.echo(f"error: {one_line(error.format_message()).rstrip('.')}{see}", err=True)
    raise typer.Exit(getattr(error, "exit_code", 2)) from None


def one_line(message: str) -> str:
    """A message as one line (pyarrow and SQLite put newlines in theirs)."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _hint(error: IbStreamError) -> str:
    if isinstance(error, StorageFullError):
        return " (no space left on the device: free some space and run it again)"
    if isinstance(error, CorruptFileError):
        return " (`ib-stream verify` lists every damaged archive file)"
    if error.__cause__ is not None and is_damage(error.__cause__):
        return f" ({REBUILD_HINT})"
    if error.__cause__ is not None and is_disk_trouble(error.__cause__):
        return " (is the disk of the data root full? free some space and run it again)"
    return ""


def foreign_error(error: OSError | sqlite3.Error | pa.ArrowException) -> IbStreamError:
    """The project's error for a foreign one that reached the command line unexplained."""
    if isinstance(error, OSError):
        return os_error(error)
    if isinstance(error, sqlite3.Error):
        return StorageError(f"a SQLite file of the data root cannot be used: {error}", details={"reason": str(error)})
    return StorageError(f"an archive file cannot be read: {error}", details={"reason": str(error)})


def os_error(error: OSError, what: str = "") -> IbStreamError:
    """Name an OSError's file, the problem and the fix; a path of the wrong kind is bad input (exit 2)."""
    where = " ".join(str(p) for p in (what, error.filename, error.filename2) if p) or "a file"
    reason = error.strerror or str(error)
    details = {"path": str(error.filename), "errno": error.errno}
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(
            f"{where}: no space left on the device ({reason}); free some space and run it again", details=details
        )
    if error.errno == errno.EROFS:
        return StorageError(
            f"{where}: the file system is read-only; use a writable data root (--data-dir)", details=details
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return StorageError(
            f"{where}: permission denied; run as a user who may write there, or use another data root (--data-dir)",
            details=details,
        )
    if error.errno == errno.ENOTDIR:
        return ConfigError(f"{where}: a part of the path is a file, not a directory; check --data-dir", details=details)
    if error.errno == errno.EISDIR:
        return ConfigError(f"{where} is a directory where a file is expected; check the path", details=details)
    return StorageError(f"{where}: {reason}", details=details)


# ---- settings and the data root ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GlobalOptions:
    config_file: Path | None
    data_dir: Path | None


DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data root; overrides the global --data-dir and the storage.data_root setting."),
]


def settings(ctx: typer.Context, **overrides: Any) -> Settings:
    """The settings of this invocation (--config), with `overrides` as `load_settings` takes them."""
    options: GlobalOptions = ctx.find_root().obj
    return load_settings(options.config_file, **overrides)


def data_root_override(ctx: typer.Context, data_dir: Path | None) -> Path | None:
    """The data root the command line asks for: the command's --data-dir, else the global one, else None."""
    options: GlobalOptions = ctx.find_root().obj
    return data_dir if data_dir is not None else options.data_dir


def storage_config(ctx: typer.Context, data_dir: Path | None = None, *, create: bool = False) -> StorageConfig:
    """The storage settings of this invocation (--config, --data-dir of the command, else the global one); the data
    root must be a directory, and exist unless `create` (commands that write, like imports, start a new one)."""
    config = settings(ctx).storage
    root = data_root_override(ctx, data_dir)
    if root is not None:
        # Applied after loading, so the option also wins over IB_STREAM_STORAGE__DATA_ROOT.
        config = StorageConfig.model_validate({**config.model_dump(), "data_root": root})
    check_data_root(config, create=create)
    return config


def check_data_root(config: StorageConfig, *, create: bool = False) -> None:
    """Refuse a data root that is not a directory (exit 2); create it when `create` and it does not exist."""
    root = config.data_root
    if root.exists() and not root.is_dir():
        raise ConfigError(
            f"data root {root} is a file, not a directory (use --data-dir or set storage.data_root)",
            details={"data_root": str(root)},
        )
    if create and not root.exists():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, "cannot create the data root:") from e
    if not root.is_dir():
        raise ConfigError(
            f"data root {root} does not exist (use --data-dir or set storage.data_root)",
            details={"data_root": str(root)},
        )


def contracts(settings: Settings) -> list[Contract]:
    """The contracts of the contracts file; a missing or broken file is one line saying how to give another."""
    try:
        return load_contracts(settings.contracts_file)
    except ConfigError as e:
        raise ConfigError(
            f"{e.message} (set contracts_file in the settings file given with --config, or IB_STREAM_CONTRACTS_FILE)",
            details=e.details,
        ) from e


def require_catalog(config: StorageConfig) -> None:
    """Refuse a data root without a catalog (exit 2) or with a damaged one (exit 1, naming the fix)."""
    if not config.index_file.is_file():
        raise ConfigError(
            f"no catalog at {config.index_file}: is the data root {config.data_root} right, and has data been stored?",
            details={"path": str(config.index_file)},
        )
    damage = catalog_damage(Layout.of(config))
    if damage is not None:
        raise StorageError(
            f"catalog {config.index_file} is damaged ({damage}): {REBUILD_HINT}",
            details={"path": str(config.index_file), "reason": damage},
        )


def catalogued_files(config: StorageConfig) -> int:
    index = PartitionIndex(config.index_file, readonly=True)
    try:
        return len(index.files())
    finally:
        index.close()


def open_store(config: StorageConfig) -> TickStore:
    """Open the store for writing (takes the data-root lock); a root that cannot be written is a one-line error."""
    with storage_work(config):
        return TickStore(config).open()


@contextlib.contextmanager
def storage_work(config: StorageConfig) -> Iterator[None]:
    """Translate an OSError of work on the data root (a full disk, a read-only mount) into a one-line error that
    names the file, or the data root when the error does not say which file."""
    try:
        yield
    except OSError as e:
        raise os_error(e, "" if e.filename else f"data root {config.data_root}:") from e


@contextlib.contextmanager
def writer_lock(config: StorageConfig) -> Iterator[None]:
    """Hold the data-root lock as a writer (refused while the service or another writer holds it)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock_data_root(config.data_root))
        except OSError as e:
            raise os_error(e) from e
        yield


# ---- contract ids ------------------------------------------------------------------------------------------


def parse_contract_id(value: str | int, option: str) -> int:
    """A contract id as HTTP accepts it (`ContractIdPath`): an integer from 1 to 2**63 - 1, IB's conId."""
    if isinstance(value, bool):
        raise ValidationError(option, value, "is not a contract id")
    try:
        number = value if isinstance(value, int) else int(str(value).strip(), 10)
    except ValueError:
        raise ValidationError(option, value, "is not a contract id (an integer, e.g. 265598)") from None
    if not 1 <= number <= MAX_CONTRACT_ID:
        raise ValidationError(option, value, f"is not a contract id: IB's conId is from 1 to {MAX_CONTRACT_ID}")
    return number


def contract_id_parser(option: str) -> Callable[[str], int]:
    """The typer `parser=` of a contract-id argument or option named `option` (errors name it)."""

    def parse(value: str) -> int:
        return parse_contract_id(value, option)

    return parse


ContractIdArgument = Annotated[
    int,
    typer.Argument(
        metavar="CONTRACT_ID", parser=contract_id_parser("CONTRACT_ID"), help="IB contract id (conId), e.g. 265598."
    ),
]
ContractIdOption = Annotated[
    int,
    typer.Option("--contract", parser=contract_id_parser("--contract"), help="Contract id (conId), e.g. 265598."),
]
OptionalContractIdOption = Annotated[
    int | None,
    typer.Option("--contract", parser=contract_id_parser("--contract"), help="Only this contract id (conId)."),
]


# ---- time ranges -------------------------------------------------------------------------------------------

StartOption = Annotated[
    str | None,
    typer.Option("--start", help="Start, inclusive: ISO-8601 with an offset or Z, or relative (now, -30m)."),
]
EndOption = Annotated[
    str | None, typer.Option("--end", help="End, exclusive: ISO-8601 with an offset or Z, or relative (now, -5m).")
]
LastOption = Annotated[
    str | None, typer.Option("--last", help="The span up to now instead of --start/--end, e.g. 2h, 30m, 1d.")
]


@dataclass(frozen=True, slots=True)
class TimeRange:
    """[start_ns, end_ns) of a command; `end_ns` None means now at the moment the store is read."""

    start_ns: int
    end_ns: int | None


def time_range(start: str | None, end: str | None, last: str | None, *, end_required: bool = False) -> TimeRange:
    """The range of --start / --end / --last, relative times read against one `now`; each error names its option."""
    now = time.time_ns()
    if last is not None:
        for option, value in (("--start", start), ("--end", end)):
            if value is not None:
                raise ValidationError("--last", last, f"and {option} exclude each other: give one of them")
        return TimeRange(now - parse_cli_duration(last, "--last"), now)
    if start is None:
        raise missing_option("--start", "or --last, e.g. --start -2h or --last 2h")
    start_ns = parse_cli_time(start, "--start", now)
    if end is None and end_required:
        raise missing_option("--end", "e.g. --end now")
    end_ns = None if end is None else parse_cli_time(end, "--end", now)
    if end_ns is not None and end_ns <= start_ns:
        raise ValidationError("--end", end, f"is not after --start {start}")
    if end_ns is None and start_ns >= now:
        raise ValidationError("--start", start, "is not before now (the default --end)")
    return TimeRange(start_ns, end_ns)


def missing_option(option: str, example: str) -> ValidationError:
    """A required option that was not given (its message names it and an example)."""
    error = ValidationError(option, None, "is required")
    error.message = f"{option} is required ({example})"
    error.args = (error.message,)
    return error


# ---- output ------------------------------------------------------------------------------------------------

_BAD_OUTPUT_PATH = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG}
)


def export(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` to `--output` as CSV, JSON (an array of rows) or Parquet, by the extension."""
    try:
        suffix = path.suffix.lower()
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        elif suffix == ".json":
            path.write_text(frame_json(frame) + "\n")
        else:
            frame.to_parquet(path, index=False)
    except OSError as e:
        if e.errno in _BAD_OUTPUT_PATH:
            raise ValidationError("--output", str(path), f"cannot be written: {e.strerror or e}") from e
        e.filename = e.filename or str(path)
        raise os_error(e, "--output") from e  # a full disk, an I/O error: a storage failure
    typer.echo(f"wrote {len(frame):,} rows to {path}")


def frame_json(frame: pd.DataFrame) -> str:
    """Rows as a JSON array of objects: times as UTC ISO-8601 with nanoseconds and Z, missing values null."""
    return str(frame.to_json(orient="records", date_format="iso", date_unit="ns"))


def cell(value: Any) -> str:
    """A table cell: empty for a missing value, UTC times with Z."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, pd.Timestamp):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def table(title: str | None, *columns: str) -> Table:
    return Table(*columns, title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)


def print_tables(*tables: Table) -> Console:
    """Print tables at their natural width: never "…" in a cell; a narrow terminal wraps the long lines itself, and
    output that is not a terminal gets every row on one line, without trailing blanks."""
    console = out()
    for shown in tables:
        for column in shown.columns:
            column.no_wrap = True
        console.width = max(console.width, console.measure(shown, options=console.options.update_width(10_000)).maximum)
        if console.is_terminal:
            console.print(shown)
            continue
        with console.capture() as captured:
            console.print(shown)
        typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))
    return console


def out() -> Console:
    # Built per call so it follows the current stdout and terminal width (tests swap both). No markup: a "[...]"
    # in a path, a tick field or an error detail is printed as it is. Soft wrap: a long line (a path) is never
    # broken by rich, on a terminal or in a log.
    return Console(highlight=False, markup=False, soft_wrap=True)


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
