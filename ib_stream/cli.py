"""Command line: thin commands over the store — archive, index rebuild, verify, query, stats, and (from their own
modules) bars, coverage, backfill, import and serve.

Every expected error (`ib_stream.errors.IbStreamError`) is turned into one line on stderr and an
exit code in exactly one place (`cli_support.RootGroup.invoke`); exit 2 means bad input, configuration or a data
root in use, exit 1 a storage problem (or, for `verify`, a mismatch found).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ib_stream import cli_bars, cli_recording, cli_serve
from ib_stream import cli_support as support
from ib_stream.cli_import import import_app
from ib_stream.clock import from_ns
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import NotFoundError, StorageError, ValidationError
from ib_stream.orderflow.query import StorageQuery
from ib_stream.store.archive import ArchiveReport
from ib_stream.store.catalog_health import catalog_damage, set_aside_catalog
from ib_stream.store.index import PartitionIndex
from ib_stream.store.layout import Layout
from ib_stream.store.readonly import open_readonly_engine
from ib_stream.store.repair import count_archive_files, rebuild, verify
from ib_stream.store.tickstore import make_layout

EXPORT_FORMATS = (".csv", ".parquet")
DEFAULT_SHOWN_ROWS = 20


app = typer.Typer(
    cls=support.RootGroup,
    name="ib-stream",
    help="Record, archive, check and query the ib-stream tick store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
index_app = typer.Typer(help="Maintain the SQLite catalog of the archive.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.command("bars")(cli_bars.bars)
app.command("coverage")(cli_recording.coverage)
app.command("backfill")(cli_recording.backfill)
app.command("serve")(cli_serve.serve)
app.add_typer(import_app, name="import")


@app.callback()
def _global_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML settings file (default: $IB_STREAM_CONFIG, else config/ib-stream.toml)."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data root; overrides the storage.data_root setting.")
    ] = None,
) -> None:
    """Record, archive, check and query the ib-stream tick store."""
    ctx.obj = support.GlobalOptions(config, data_dir)


# ---- archive ---------------------------------------------------------------------------------------


@app.command()
def archive(
    ctx: typer.Context,
    compact: Annotated[bool, typer.Option("--compact", help="Then compact the parts of closed partitions.")] = False,
    retention: Annotated[
        bool, typer.Option("--retention", help="Then delete segments and archive files past retention.")
    ] = False,
    data_dir: support.DataDirOption = None,
) -> None:
    """Archive every sealed buffer segment into Parquet (takes the data-root lock)."""
    config = support.storage_config(ctx, data_dir)
    reports: list[tuple[str, ArchiveReport]] = []
    with support.storage_work(config):
        store = support.open_store(config)
        try:
            pending = store.archiver.pending_segments()
            with support.progress("archiving segments", len(pending)) as advance:
                reports.append(("archive", store.archiver.archive_sealed(progress=lambda ticks: advance(1))))
            if compact:
                with support.progress("compacting partitions", None) as advance:
                    reports.append(("compact", store.archiver.compact(progress=lambda ticks: advance(1))))
            if retention:
                with support.progress("applying retention", None):
                    reports.append(("retention", store.run_retention()))
        finally:
            store.close()
    table = support.table("archive", "job", "segments", "ticks", "files written", "files removed", "seconds")
    for name, report in reports:
        table.add_row(
            name,
            f"{report.segments:,}" if name == "archive" else "",
            f"{report.ticks:,}",
            f"{report.files_written:,}",
            f"{report.files_removed:,}",
            f"{report.seconds:.2f}",
        )
    support.print_tables(table)


# ---- index rebuild / verify ------------------------------------------------------------------------


@index_app.command("rebuild")
def index_rebuild(ctx: typer.Context, data_dir: support.DataDirOption = None) -> None:
    """Recreate the catalog from the archive files alone (refused while a writer holds the data root).

    A damaged catalog is kept aside as index.db.corrupt-<UTC time>; the gap and import ledgers it held are lost.
    """
    config = support.storage_config(ctx, data_dir)
    layout = Layout.of(config)
    with support.writer_lock(config), support.storage_work(config):
        damage = catalog_damage(layout, thorough=True)
        kept = _set_aside(layout) if damage is not None else None
        with support.progress("reading archive files", count_archive_files(config)) as advance:
            report = rebuild(config, progress=advance)
    out = support.out()
    if kept is not None:
        out.print(f"the catalog {layout.index_file} was damaged ({damage}): kept as {kept}")
    out.print(
        f"catalog rebuilt: {report.files:,} files, {report.ticks:,} ticks, "
        f"{len(report.superseded):,} superseded by compaction"
    )
    for problem in report.unreadable:
        typer.echo(f"skipped {problem.path}: {support.one_line(problem.detail)}", err=True)
    if kept is not None:
        typer.echo(
            f"warning: the gap ledger and the import ledger were in the damaged catalog and cannot be rebuilt from "
            f"the archive files: they start empty (recorded gaps before now are not reported, and importing a file "
            f"again stores its ticks again); what is left of them is in {kept}",
            err=True,
        )


def _set_aside(layout: Layout) -> Path:
    try:
        return set_aside_catalog(layout, time.time_ns())
    except OSError as e:
        raise StorageError(
            f"the damaged catalog {layout.index_file} cannot be moved aside: {e.strerror or e}",
            details={"path": str(layout.index_file)},
        ) from e


@app.command("verify")
def verify_command(
    ctx: typer.Context,
    checksums: Annotated[
        bool,
        typer.Option("--checksums/--no-checksums", help="Compare sha256 checksums too (reads every file)."),
    ] = True,
    data_dir: support.DataDirOption = None,
) -> None:
    """Compare the catalog with the archive files; exit 1 when any mismatch is found."""
    config = support.storage_config(ctx, data_dir)
    support.require_catalog(config)
    with support.progress("verifying files", support.catalogued_files(config)) as advance:
        report = verify(config, checksums=checksums, progress=advance)
    out = support.out()
    if report.ok:
        out.print(f"ok: {report.files_checked:,} catalogued files match the archive")
        return
    table = support.table(
        f"{len(report.problems)} problem{'s' if len(report.problems) > 1 else ''}", "kind", "path", "detail"
    )
    for problem in report.problems:
        table.add_row(problem.kind, problem.path, support.one_line(problem.detail))
    support.print_tables(table)
    raise typer.Exit(1)


# ---- query -----------------------------------------------------------------------------------------


@app.command()
def query(
    ctx: typer.Context,
    contract_id: support.ContractIdArgument,
    tick_types: Annotated[str, typer.Option("--tick-types", help="Comma list, e.g. bid_ask,last.")],
    start: support.StartOption = None,
    end: support.EndOption = None,
    last: support.LastOption = None,
    resolution: Annotated[
        str | None,
        typer.Option("--resolution", help="tick (default) or a bar size: 1s 5s 15s 30s 1m 5m 15m 30m 1h 1d."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write all rows to a .csv or .parquet file instead of printing.")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, help=f"At most this many rows (printing shows {DEFAULT_SHOWN_ROWS} unless given)."
        ),
    ] = None,
    data_dir: support.DataDirOption = None,
) -> None:
    """Query a contract's ticks (or bars) in [start, end) from the archive and the buffer, read-only."""
    if output is not None and output.suffix.lower() not in EXPORT_FORMATS:
        raise ValidationError(
            "--output", str(output), f"has an unknown extension (use one of {', '.join(EXPORT_FORMATS)})"
        )
    span = support.time_range(start, end, last)
    config = support.storage_config(ctx, data_dir)
    support.require_catalog(config)
    engine = open_readonly_engine(config)
    storage_query = StorageQuery(engine)
    try:
        frame = storage_query.query_range_sync(contract_id, tick_types, span.start_ns, span.end_ns, resolution)
    finally:
        storage_query.close()
        engine.index.close()
    if output is not None:
        support.export(frame if limit is None else frame.head(limit), output)
        return
    shown = frame.head(limit or DEFAULT_SHOWN_ROWS)
    table = support.table(None, *[str(c) for c in shown.columns])
    for row in shown.itertuples(index=False):
        table.add_row(*[support.cell(v) for v in row])
    out = support.print_tables(table)
    out.print(f"{len(frame):,} rows, {len(shown):,} shown")


# ---- stats -----------------------------------------------------------------------------------------


@app.command()
def stats(
    ctx: typer.Context,
    contract: support.OptionalContractIdOption = None,
    data_dir: support.DataDirOption = None,
) -> None:
    """Show per stream what the archive and the buffer hold, and the daily statistics."""
    config = support.storage_config(ctx, data_dir)
    support.require_catalog(config)
    index = PartitionIndex(config.index_file, readonly=True)
    try:
        files = index.files()
        daily = index.statistics()
        streams = set(index.streams())
    finally:
        index.close()
    layout = make_layout(config)
    streams |= set(layout.buffered_streams())
    if contract is not None:
        streams = {s for s in streams if s.contract_id == contract}
        if not streams:
            raise NotFoundError(
                f"contract {contract} has no data in {config.data_root}", details={"contract_id": contract}
            )
    archived = support.table("archive", "stream", "files", "ticks", "size", "bytes/tick", "vs JSONL")
    buffered = support.table("buffer", "stream", "segments", "size", "from", "to")
    for stream in sorted(streams):
        name = f"{stream.contract_id} {stream.tick_type.value}"
        mine = [f for f in files if f.stream == stream]
        ticks = sum(f.tick_count for f in mine)
        size = sum(f.file_size_bytes for f in mine)
        jsonl = sum(f.jsonl_bytes for f in mine)
        archived.add_row(
            name,
            f"{len(mine):,}",
            f"{ticks:,}",
            _human_bytes(size),
            f"{size / ticks:.1f}" if ticks else "",
            f"{jsonl / size:.1f}x smaller" if size else "",
        )
        segments = layout.segments(stream)
        buffered.add_row(
            name,
            f"{len(segments):,}",
            _human_bytes(sum(_size(s.path) for s in segments)),
            _minute(segments[0].start_ns) if segments else "",
            _minute(segments[-1].end_ns) if segments else "",
        )
    support.print_tables(archived, buffered)
    rows = [d for d in daily if StreamKey(d.contract_id, TickType(d.tick_type)) in streams]
    if rows:
        days = support.table("daily statistics")
        for column in ("date", "stream"):
            days.add_column(column, no_wrap=True)
        for column in ("ticks", "prices", "volume", "vwap", "low", "high"):
            days.add_column(column, justify="right")
        for d in rows:
            days.add_row(
                d.date,
                f"{d.contract_id} {d.tick_type}",
                f"{d.total_ticks:,}",
                f"{d.unique_prices:,}",
                _number(d.total_volume),
                _number(d.vwap),
                _number(d.low_price),
                _number(d.high_price),
            )
        support.print_tables(days)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # archived and deleted by retention while we looked
        return 0


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:,.4f}".rstrip("0").rstrip(".")


def _minute(ns: int) -> str:
    return from_ns(ns).strftime("%Y-%m-%d %H:%MZ")


def main() -> None:
    """Entry point of the `ib-stream` console script."""
    app()


if __name__ == "__main__":
    main()
