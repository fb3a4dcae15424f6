"""Command line: `ib-stream import orderflow|file|presets|list|undo` — existing recordings into the store, exactly
once, and out of it again.

The sub-app `import_app` is added to the root command group by `ib_stream.cli`; it shares the
storage settings, progress bar and tables of `ib_stream.cli_support`, and the root group's error
handling (expected errors become one line on stderr and exit 2 for bad input).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ib_stream import cli_support as support
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import TickType
from ib_stream.errors import ValidationError
from ib_stream.importers.ledger import IMPORTED, ImportInfo
from ib_stream.importers.orderflow_book import BOOK_ROWS
from ib_stream.importers.orderflow_sqlite import (
    OrderflowOptions,
    import_orderflow,
    inspect_recording,
    resolve_contracts,
    selected_rows,
)
from ib_stream.importers.presets import PRESETS, preset
from ib_stream.importers.tabular import FORMATS, Output, Recipe, import_file, parse_mapping, parse_pairs, scan_file
from ib_stream.importers.undo import ImportUndo, UndoReport, list_imports
from ib_stream.importers.writer import ImportReport
from ib_stream.settings import StorageConfig
from ib_stream.store.tickstore import TickStore
from ib_stream.times import iso_compact

import_app = typer.Typer(
    help="Import existing recordings into the store (a re-run stores nothing twice).", no_args_is_help=True
)

_FileArgument = Annotated[Path, typer.Argument(metavar="FILE", help="The recording to import.")]
_BatchOption = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Ticks per appended batch (default: the storage.batch_size setting)."),
]


@import_app.command("orderflow")
def orderflow_command(
    ctx: typer.Context,
    file: _FileArgument,
    contract_id: Annotated[
        int | None,
        typer.Option(
            "--contract",
            "--contract-id",
            parser=support.contract_id_parser("--contract"),
            help="Contract id of the file's only (or only chosen) instrument.",
        ),
    ] = None,
    mapping: Annotated[
        list[str] | None,
        typer.Option("--map", metavar="INSTRUMENT=ID", help="Contract id of an instrument (repeat, or comma list)."),
    ] = None,
    instrument: Annotated[
        list[str] | None, typer.Option("--instrument", help="Import only this instrument (repeatable).")
    ] = None,
    book_rows: Annotated[
        str, typer.Option("--book-rows", help="What a book row holds: full (the whole book) or delta (changed levels).")
    ] = "full",
    batch_size: _BatchOption = None,
    data_dir: support.DataDirOption = None,
) -> None:
    """Import an order-flow SQLite recording: book rows as price-level depth, trades as last with side."""
    if book_rows not in BOOK_ROWS:
        raise ValidationError("--book-rows", book_rows, f"is not one of {', '.join(BOOK_ROWS)}")
    options = OrderflowOptions(
        contract_ids=_instrument_map(mapping or []),
        contract_id=contract_id,
        instruments=tuple(instrument or ()),
        book_rows="full" if book_rows == "full" else "delta",
    )
    recording = inspect_recording(file)
    total = selected_rows(recording, resolve_contracts(recording, options), options)
    _run_import(ctx, data_dir, batch_size, file, total, import_orderflow, options)


@import_app.command("file")
def file_command(
    ctx: typer.Context,
    file: _FileArgument,
    contract_id: Annotated[
        int,
        typer.Option(
            "--contract",
            "--contract-id",
            parser=support.contract_id_parser("--contract"),
            help="Contract id the ticks are stored under.",
        ),
    ],
    preset_name: Annotated[
        str | None, typer.Option("--preset", help="A named layout (see `ib-stream import presets`).")
    ] = None,
    mapping: Annotated[
        str | None,
        typer.Option("--map", metavar="COL=FIELD,...", help="Column of each tick field (instead of --preset)."),
    ] = None,
    tick_type: Annotated[str | None, typer.Option("--tick-type", help="Tick type the --map columns make.")] = None,
    time_unit: Annotated[
        str, typer.Option("--time-unit", help="With --map: auto, s, ms, us, ns, iso or a strptime pattern (UTC).")
    ] = "auto",
    constants: Annotated[
        str | None,
        typer.Option("--set", metavar="FIELD=VALUE,...", help="With --map: fields with one value for every row."),
    ] = None,
    where: Annotated[
        str | None,
        typer.Option("--where", metavar="COL=VALUE,...", help="With --map: keep only rows holding these values."),
    ] = None,
    file_format: Annotated[
        str | None, typer.Option("--format", help=f"With --map: {', '.join(FORMATS)} (default: from the file name).")
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option("--columns", metavar="COL,...", help="With --map: column names of a CSV without a header."),
    ] = None,
    only: Annotated[
        str | None, typer.Option("--only", help="Import only these tick types of a preset (comma list, e.g. bid_ask).")
    ] = None,
    batch_size: _BatchOption = None,
    data_dir: support.DataDirOption = None,
) -> None:
    """Import a CSV / JSON-lines file (plain or gzip) through a preset or a column mapping."""
    if (preset_name is None) == (mapping is None):
        raise ValidationError("--preset", preset_name, "or --map is needed, and only one of them")
    if preset_name is not None:
        custom = {"--tick-type": tick_type, "--set": constants, "--where": where, "--format": file_format}
        custom["--columns"] = columns
        custom["--time-unit"] = None if time_unit == "auto" else time_unit
        for option, value in custom.items():
            if value is not None:
                raise ValidationError(option, value, f"applies to --map only: preset {preset_name} fixes it")
        recipe, option = preset(preset_name), "--preset"
    else:
        recipe, option = (
            _custom_recipe(mapping or "", tick_type, time_unit, constants, where, file_format, columns),
            "--map",
        )
    if file_format is not None and file_format not in FORMATS:
        raise ValidationError("--format", file_format, f"is not one of {', '.join(FORMATS)}")
    chosen = TickType.parse_list(only) if only else ()
    if not file.is_file():
        raise ValidationError("FILE", str(file), "does not exist")
    _, total, _ = scan_file(file, recipe)
    _run_import(ctx, data_dir, batch_size, file, total, import_file, recipe, contract_id, option=option, only=chosen)


@import_app.command("presets")
def presets_command() -> None:
    """List the named file layouts `import file --preset` knows."""
    table = support.table(None, "preset", "format", "streams", "layout")
    for recipe in PRESETS.values():
        streams = ", ".join(o.tick_type.value for o in recipe.outputs)
        table.add_row(recipe.name, recipe.file_format or "", streams, recipe.description)
    support.print_tables(table)


@import_app.command("list")
def list_command(ctx: typer.Context, data_dir: support.DataDirOption = None) -> None:
    """List the imports of the data root: id, state, when, file, how it was read, streams, ticks and time span."""
    config = support.storage_config(ctx, data_dir)
    imports = list_imports(config.index_file)
    if not imports:
        support.out().print("no imports", highlight=False)
        return
    table = support.table(None, "id", "state", "when", "file", "how", "streams", "ticks", "already stored", "span")
    for info in imports:
        span = info.span
        table.add_row(
            str(info.import_id),
            _state(info),
            iso_compact(info.started_ns - info.started_ns % 1_000_000_000),
            info.file_path,
            info.how,
            ", ".join(f"{s.stream.contract_id} {s.stream.tick_type.value}" for s in info.streams),
            f"{info.stored:,}",
            f"{sum(s.matched for s in info.streams):,}",
            f"{iso_compact(span[0])} .. {iso_compact(span[1])}" if span else "",
        )
    support.print_tables(table)


@import_app.command("undo")
def undo_command(
    ctx: typer.Context,
    import_id: Annotated[int, typer.Argument(metavar="ID", help="The import to undo (see `import list`).")],
    data_dir: support.DataDirOption = None,
) -> None:
    """Remove the ticks of one import from the store, as if it had never run (archive, buffer, derived files)."""
    config = support.storage_config(ctx, data_dir)
    support.require_catalog(config)
    store = _open_store(config)
    try:
        undo = ImportUndo(store, import_id)
        try:
            steps = undo.prepare()
            with support.progress(f"undoing import {import_id}", steps) as advance:
                report = undo.run(advance)
        finally:
            undo.close()
    finally:
        store.close()
    _print_undo(report)


def _state(info: ImportInfo) -> str:
    return "interrupted" if info.state == IMPORTED and info.finished_ns is None else info.state


def _print_undo(report: UndoReport) -> None:
    out = support.out()
    info = report.info
    if report.removal is None:
        out.print(f"import {info.import_id} ({info.file_path}) was already undone: nothing to do", highlight=False)
        return
    removal = report.removal
    out.print(
        f"undid import {info.import_id} ({info.file_path}, {info.how}): {removal.ticks_removed:,} ticks removed, "
        f"{removal.partitions_rewritten:,} archive partitions and {removal.segments_rewritten:,} buffer segments "
        f"rewritten, {removal.derived_files_removed:,} snapshots and rollups to rebuild, {removal.seconds:.2f} s",
        highlight=False,
    )
    table = support.table(None, "stream", "ticks removed")
    for summary in info.streams:
        table.add_row(
            f"{summary.stream.contract_id} {summary.stream.tick_type.value}", f"{removal.removed[summary.stream]:,}"
        )
    support.print_tables(table)
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)


def _run_import(
    ctx: typer.Context,
    data_dir: Path | None,
    batch_size: int | None,
    file: Path,
    total: int | None,
    importer: Callable[..., ImportReport],
    *args: Any,
    **kwargs: Any,
) -> None:
    # Both importers take (store, file, ...) and the same batch, progress and future-skew keywords.
    config = support.storage_config(ctx, data_dir, create=True)
    store = _open_store(config)
    try:
        with support.progress(f"importing {file.name}", total) as advance:
            report = importer(
                store,
                file,
                *args,
                batch_size=batch_size or config.batch_size,
                progress=advance,
                future_skew_ns=_future_skew_ns(ctx),
                **kwargs,
            )
    finally:
        store.close()
    _print_report(report)


def _open_store(config: StorageConfig) -> TickStore:
    # The import is the only writer of the locked data root, and it waits for each batch to be
    # durable: group commit would only add its interval to every batch (5x slower at 1,000 ticks).
    return TickStore(config.model_copy(update={"fsync_interval_ms": 0})).open()


def _custom_recipe(
    mapping: str,
    tick_type: str | None,
    time_unit: str,
    constants: str | None,
    where: str | None,
    file_format: str | None,
    columns: str | None,
) -> Recipe:
    if tick_type is None:
        raise ValidationError("--tick-type", None, "is required with --map")
    output = Output(
        TickType.parse(tick_type, "--tick-type"),
        parse_mapping(mapping),
        time_unit=time_unit,
        constants=parse_pairs(constants, "--set"),
        where=parse_pairs(where, "--where"),
    )
    header = tuple(c.strip() for c in columns.split(",") if c.strip()) if columns else None
    return Recipe("custom", "--map", (output,), file_format=file_format, header=header)


def _instrument_map(items: list[str]) -> dict[str, int]:
    contracts: dict[str, int] = {}
    for item in (part.strip() for entry in items for part in entry.split(",")):
        if not item:
            continue
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip():
            raise ValidationError("--map", item, "is not INSTRUMENT=CONTRACT_ID")
        contracts[name.strip()] = support.parse_contract_id(value, "--map")
    return contracts


def _print_report(report: ImportReport) -> None:
    out = support.out()
    streams = sorted(set(report.stored) | set(report.duplicates))
    table = support.table(None, "stream", "ticks stored", "already stored")
    for stream in streams:
        table.add_row(
            f"{stream.contract_id} {stream.tick_type.value}",
            f"{report.stored[stream]:,}",
            f"{report.duplicates[stream]:,}",
        )
    filtered = f"{report.rows_filtered:,} rows filtered out by --where, " if report.filtered else ""
    named = f"import {report.import_id}: " if report.import_id is not None else ""
    out.print(
        f"{named}imported {report.file} (sha256 {report.file_sha256[:12]}): {report.rows_read:,} rows read, "
        f"{report.ticks_stored:,} ticks stored, {report.ticks_duplicate:,} already stored, "
        f"{report.rows_skipped:,} rows skipped, {filtered}{report.batches:,} batches, {report.seconds:.2f} s",
        highlight=False,
    )
    tables = [table]
    for title, counts, examples in (
        ("skipped", report.skipped, report.examples),
        ("filtered out by --where", report.filtered, report.filtered_examples),
    ):
        if counts:
            listed = support.table(title, "reason", "rows", "first")
            for reason, count in counts.most_common():
                listed.add_row(reason, f"{count:,}", examples.get(reason, ""))
            tables.append(listed)
    support.print_tables(*tables)
    for stream, upto in sorted(report.grown.items()):
        out.print(
            f"{stream.contract_id} {stream.tick_type.value}: the file grew since an earlier import; its first "
            f"{upto:,} ticks were stored then",
            highlight=False,
        )
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)


def _future_skew_ns(ctx: typer.Context) -> int:
    """How far ahead of the clock an imported tick may lie (setting imports.max_future_skew_seconds)."""
    return int(support.settings(ctx).imports.max_future_skew_seconds * NS_PER_SECOND)
