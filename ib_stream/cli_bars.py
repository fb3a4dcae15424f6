"""`ib-stream bars`: order-flow bars of a range — OHLC with buy / sell volume, CVD, OBI — read-only from a data root.

A thin command over `StorageQuery.bars_sync` (the same bars as `GET /v2/bars`, see docs/concepts/order-flow.md),
with the contracts of the contracts file for their calendars (the CVD's session reset, `1d` bars). It reads
without locking: safe while the service writes the data root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ib_stream import cli_support as support
from ib_stream.analytics.grid import BAR_RESOLUTIONS, parse_bar_resolution
from ib_stream.analytics.request import DEFAULT_LEVELS, KINDS, MAX_LEVELS, OBI_SOURCES, TRADE_TYPES, parse_kinds
from ib_stream.calendars import SESSION_TYPES
from ib_stream.errors import ValidationError
from ib_stream.orderflow.query import StorageQuery
from ib_stream.store.readonly import open_readonly_engine

PRINT_FORMATS = ("table", "csv", "json")
EXPORT_FORMATS = (".csv", ".json", ".parquet")


def bars(
    ctx: typer.Context,
    contract_id: support.ContractIdArgument,
    start: support.StartOption = None,
    end: support.EndOption = None,
    last: support.LastOption = None,
    resolution: Annotated[
        str, typer.Option("--resolution", help="Bar size: 1s 5s 15s 30s 1m 5m 15m 30m 1h 24h, or 1d (one per session).")
    ] = "1m",
    kinds: Annotated[str, typer.Option("--kinds", help="Comma list of ohlc, cvd, obi.")] = ",".join(KINDS),
    session: Annotated[
        str, typer.Option("--session", help=f"Session for the CVD reset and 1d bars: {', '.join(SESSION_TYPES)}.")
    ] = "regular",
    trades: Annotated[str, typer.Option("--trades", help="Trade stream the bars are built from: last or all_last.")] = (
        "last"
    ),
    obi_source: Annotated[
        str, typer.Option("--obi-source", help="OBI from depth, from quotes, or auto (depth when recorded).")
    ] = "auto",
    levels: Annotated[
        int | None, typer.Option("--levels", help=f"Depth levels per side for OBI (1..{MAX_LEVELS}, default 10).")
    ] = None,
    print_format: Annotated[
        str | None, typer.Option("--format", help="How to print the bars: table (default), csv or json.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write the bars to a .csv, .json or .parquet file instead.")
    ] = None,
    data_dir: support.DataDirOption = None,
) -> None:
    """Order-flow bars of a contract in [start, end): OHLC with buy / sell volume and VWAP, CVD, OBI (read-only)."""
    asked = _options(resolution, kinds, session, trades, obi_source, levels, print_format, output)
    span = support.time_range(start, end, last)
    settings = support.settings(ctx)
    config = support.storage_config(ctx, data_dir)
    support.require_catalog(config)
    known = support.contracts(settings)
    engine = open_readonly_engine(config)
    query = StorageQuery(engine, config=config, contracts=known)
    try:
        frame = query.bars_sync(
            contract_id,
            span.start_ns,
            span.end_ns,
            asked.resolution,
            asked.kinds,
            session=asked.session,
            trades=asked.trades,
            obi_source=asked.obi_source,
            levels=asked.levels,
        )
    finally:
        query.close()
        engine.index.close()
    if output is not None:
        support.export(frame, output)
    elif print_format == "csv":
        typer.echo(frame.to_csv(index=False), nl=False)
    elif print_format == "json":
        typer.echo(support.frame_json(frame))
    else:
        table = support.table(None, *[str(c) for c in frame.columns])
        for row in frame.itertuples(index=False):
            table.add_row(*[support.cell(v) for v in row])
        support.print_tables(table).print(f"{len(frame):,} bar{'' if len(frame) == 1 else 's'}")


@dataclass(frozen=True, slots=True)
class _Asked:
    resolution: str
    kinds: tuple[str, ...]
    session: str
    trades: str
    obi_source: str
    levels: int


def _options(
    resolution: str,
    kinds: str,
    session: str,
    trades: str,
    obi_source: str,
    levels: int | None,
    print_format: str | None,
    output: Path | None,
) -> _Asked:
    """The options of `bars_sync`, each checked here so that an error names the command-line option."""
    try:
        resolution = parse_bar_resolution(resolution)
    except ValidationError:
        raise ValidationError(
            "--resolution", resolution, f"is not a bar size (use one of {', '.join(BAR_RESOLUTIONS)})"
        ) from None
    try:
        chosen = parse_kinds(kinds)
    except ValidationError:
        raise ValidationError("--kinds", kinds, f"is not a comma list of {', '.join(KINDS)}") from None
    _choice("--session", session, SESSION_TYPES)
    _choice("--trades", trades, tuple(t.value for t in TRADE_TYPES))
    _choice("--obi-source", obi_source, OBI_SOURCES)
    if levels is not None and not 1 <= levels <= MAX_LEVELS:
        raise ValidationError("--levels", levels, f"is not from 1 to {MAX_LEVELS}")
    if print_format is not None:
        _choice("--format", print_format, PRINT_FORMATS)
        if output is not None:
            raise ValidationError(
                "--format", print_format, "is for printing: --output takes the format of its extension"
            )
    if output is not None and output.suffix.lower() not in EXPORT_FORMATS:
        raise ValidationError(
            "--output", str(output), f"has an unknown extension (use one of {', '.join(EXPORT_FORMATS)})"
        )
    return _Asked(resolution, chosen, session, trades, obi_source, DEFAULT_LEVELS if levels is None else levels)


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValidationError(option, value, f"is not one of {', '.join(allowed)}")
