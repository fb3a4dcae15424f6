"""`ib-stream coverage` and `ib-stream backfill`: what is recorded of a contract, and filling holes from IB history.

`coverage` reads the data root without locking it (the service may be running). `backfill` writes:
when the service holds the data root it asks the service (POST /v2/contracts/{id}/backfill, bearer
api.token), else it connects to TWS / IB Gateway with its own client id (`ib.client_id + 1` unless
`--client-id`). Either way it pages through reqHistoricalTicks with IB's pacing, stores what the store
does not hold yet (source `ib_hist`) and marks the ledger's gaps that the span covers as backfilled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import orjson
import typer
from pydantic import SecretStr

from ib_stream import cli_support as support
from ib_stream.api.params import parse_duration, parse_tick_types
from ib_stream.clock import NS_PER_SECOND, SystemClock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import ContractNotFoundError, DataRootLockedError, SourceError, ValidationError
from ib_stream.settings import IbConfig
from ib_stream.sources.ib_backfill import Backfiller, backfillable
from ib_stream.sources.ib_connection import IbConnection, IbEvent, ib_contract
from ib_stream.sources.ib_errors import classify, format_error
from ib_stream.sources.ib_history import HistoryRequests
from ib_stream.sources.ib_pacing import Pacer
from ib_stream.store.coverage import stream_coverage
from ib_stream.store.gaps import GapLedger
from ib_stream.store.readonly import open_readonly_engine
from ib_stream.store.service_file import announced_service_url
from ib_stream.store.tickstore import TickStore
from ib_stream.times import iso_ns

log = logging.getLogger(__name__)
TickTypesOption = Annotated[
    str | None, typer.Option("--tick-types", help="Comma list of tick types (default: the contract's streams).")
]


def coverage(
    ctx: typer.Context,
    contract_id: support.ContractIdOption,
    tick_types: TickTypesOption = None,
    min_gap: Annotated[str, typer.Option("--min-gap", help="Report holes at least this long (30s, 5m, 1h).")] = "1m",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (as the HTTP API gives it).")
    ] = False,
    data_dir: support.DataDirOption = None,
) -> None:
    """Show what is recorded of a contract per stream, the holes, and the gap ledger (reasons, backfill)."""
    config = support.storage_config(ctx, data_dir)
    support.require_catalog(config)
    contract = _contract(ctx, contract_id)
    gap_ns = parse_duration(min_gap, "--min-gap")
    asked = parse_tick_types(tick_types, "--tick-types") if tick_types else contract.tick_types
    engine = open_readonly_engine(config)
    ledger = GapLedger(config.index_file, readonly=True)
    try:
        report = [stream_coverage(engine, ledger, StreamKey(contract_id, t), gap_ns) for t in asked]
    finally:
        ledger.close()
        engine.index.close()
    if as_json:
        typer.echo(orjson.dumps({"contract_id": contract_id, "symbol": contract.symbol, "streams": report}))
        return
    streams = support.table(f"{contract.symbol} ({contract_id})", "stream", "ticks", "first", "last", "holes")
    gaps = support.table(
        "recorded gaps", "stream", "start", "end", "seconds", "reason", "code", "backfill", "ticks", "detail"
    )
    for stream in report:
        streams.add_row(
            stream["tick_type"],
            f"{stream['tick_count']:,}",
            stream["first_tick"] or "",
            stream["last_tick"] or "",
            str(len(stream["gaps"])),
        )
        for gap in stream["recorded_gaps"]:
            seconds = gap["duration_seconds"]
            gaps.add_row(
                gap["tick_type"],
                gap["start"],
                gap["end"] or "(open)",
                "" if seconds is None else f"{seconds:,.0f}",
                gap["reason"],
                "" if gap["code"] is None else str(gap["code"]),
                gap["backfill"],
                str(gap["backfilled_ticks"]),
                gap["backfill_note"] or gap["detail"],
            )
    if gaps.row_count:
        support.print_tables(streams, gaps)
    else:
        support.print_tables(streams).print("no recorded gaps: the gap ledger has nothing for these streams")


def backfill(
    ctx: typer.Context,
    contract_id: support.ContractIdOption,
    start: support.StartOption = None,
    end: support.EndOption = None,
    last: support.LastOption = None,
    tick_types: TickTypesOption = None,
    client_id: Annotated[
        int | None,
        typer.Option("--client-id", min=0, max=2**31 - 1, help="API client id (default: ib.client_id + 1)."),
    ] = None,
    service_url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The running service, used when it holds the data root (default: where `ib-stream serve` "
            "says it listens, else api host:port).",
        ),
    ] = None,
    data_dir: support.DataDirOption = None,
) -> None:
    """Fill [start, end) of a contract's streams from IB's historical ticks, storing only what is not held.

    With the service running on the data root, the service does it (POST /v2/contracts/{id}/backfill,
    with the api.token); otherwise this command connects to IB itself.
    """
    settings = support.settings(ctx)
    span = support.time_range(start, end, last, end_required=True)
    start_ns, end_ns = span.start_ns, span.end_ns
    assert end_ns is not None  # end_required
    config = support.storage_config(ctx, data_dir)
    contract = _contract(ctx, contract_id)
    asked = parse_tick_types(tick_types, "--tick-types") if tick_types else contract.tick_types
    wanted = [t for t in asked if backfillable(t)]
    for skipped in set(asked) - set(wanted):
        typer.echo(f"{skipped.value}: IB has no historical ticks for it, skipped", err=True)
    if not wanted:
        raise ValidationError("--tick-types", ",".join(t.value for t in asked), "has nothing IB can backfill")
    ib = settings.ib.model_copy(update={"client_id": settings.ib.client_id + 1 if client_id is None else client_id})
    store = TickStore(config, SystemClock())
    try:
        store.open()
    except OSError as e:
        raise support.os_error(e) from e
    except DataRootLockedError:
        # The service holds the data root: it backfills through its own IB connection.
        url = service_url or announced_service_url(config) or f"http://{settings.api.host}:{settings.api.port}"
        typer.echo(f"the service holds the data root: asking it at {url}", err=True)
        lines = _backfill_through_service(url, settings.api.token, contract_id, wanted, start_ns, end_ns)
    else:
        try:
            lines = asyncio.run(_backfill(store, ib, contract, wanted, start_ns, end_ns))
        finally:
            store.close()
    for line in lines:
        typer.echo(line)


def _backfill_through_service(
    url: str, token: SecretStr | None, contract_id: int, tick_types: list[TickType], start_ns: int, end_ns: int
) -> list[str]:
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token is not None else {}
    params = {
        "start_time": iso_ns(start_ns),
        "end_time": iso_ns(end_ns),
        "tick_types": ",".join(t.value for t in tick_types),
    }
    try:
        answer = httpx.post(f"{url}/v2/contracts/{contract_id}/backfill", params=params, headers=headers, timeout=None)
    except httpx.TransportError as e:
        raise SourceError(
            f"the data root is locked but no service answers at {url} (give the service's address with --url): {e}"
        ) from e
    if answer.status_code != 200:
        try:
            message = answer.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = answer.text
        raise SourceError(f"the service at {url} refused the backfill (HTTP {answer.status_code}): {message}")
    lines = []
    for result in answer.json()["results"]:
        lines.append(
            f"{result['tick_type']} {result['start']} .. {result['end']}: {result['received']} received, "
            f"{result['stored']} stored, {result['duplicates']} already held, {result['requests']} requests"
        )
        if result["gaps_marked"]:
            lines.append(f"  {result['gaps_marked']} recorded gap(s) of {result['tick_type']} marked backfilled")
    return lines


async def _backfill(
    store: TickStore, config: IbConfig, contract: Contract, tick_types: list[TickType], start_ns: int, end_ns: int
) -> list[str]:
    lines = []
    async with _history(config) as history:

        async def fetch(c: Contract, at_ns: int, what: str) -> list[Any]:
            return await history.fetch(ib_contract(c), at_ns, what)

        backfiller = Backfiller(store, fetch)
        span_seconds = max(1, (end_ns - start_ns) // NS_PER_SECOND)
        for tick_type in tick_types:
            with support.progress(f"{contract.symbol} {tick_type.value}", span_seconds) as advance:
                done = 0

                def progress(covered_ns: int) -> None:
                    nonlocal done
                    now = min(span_seconds, covered_ns // NS_PER_SECOND)
                    advance(now - done)
                    done = now

                result, marked = await backfiller.fill_span(contract, tick_type, start_ns, end_ns, progress)
            lines.append(result.describe())
            if marked:
                lines.append(f"  {marked} recorded gap(s) of {tick_type.value} marked backfilled")
    return lines


@contextlib.asynccontextmanager
async def _history(config: IbConfig) -> AsyncIterator[HistoryRequests]:
    """A connection to TWS / IB Gateway used only for historical requests."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    history = HistoryRequests(
        iter(range(1, 1 << 31)),
        Pacer(config.historical_requests_per_window, config.historical_window_seconds),
        timeout=config.historical_timeout_seconds,
        pacing_wait=config.pacing_retry_seconds,
    )

    def deliver(event: IbEvent) -> None:
        if event.name == "next_valid_id":
            ready.set()
        elif event.name == "historical":
            history.on_ticks(*event.args)
        elif event.name == "closed":
            history.fail_all("the IB connection closed")
        elif event.name == "error":
            req_id, code, message = event.args
            rule = classify(code, message)
            log.log(rule.severity.level, format_error(code, message, req_id, "backfill"))
            history.on_error(req_id, code, message, rule.action)

    for port in config.ports:
        conn = IbConnection(loop, deliver, SystemClock())
        if await conn.open(config.host, port, config.client_id, config.connect_timeout_seconds):
            try:
                await asyncio.wait_for(ready.wait(), config.connect_timeout_seconds)
            except TimeoutError:
                conn.close()
                continue
            history.conn = conn
            try:
                yield history
            finally:
                conn.close()
            return
    raise SourceError(
        f"cannot connect to TWS / IB Gateway at {config.host} ports {list(config.ports)} "
        f"(client id {config.client_id}); is it running with the API enabled?",
        details={"host": config.host, "ports": list(config.ports)},
    )


def _contract(ctx: typer.Context, contract_id: int) -> Contract:
    settings = support.settings(ctx)
    for contract in support.contracts(settings):
        if contract.con_id == contract_id:
            return contract
    raise ContractNotFoundError(
        f"--contract {contract_id} is not in the contracts file {settings.contracts_file}",
        details={"field": "--contract", "value": contract_id},
    )
