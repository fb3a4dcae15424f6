"""Load the contracts to record from the contracts file (TOML), with errors naming the field."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ib_stream.domain import Contract, TickType
from ib_stream.errors import ConfigError, ValidationError

_KNOWN = {
    "con_id",
    "symbol",
    "sec_type",
    "exchange",
    "currency",
    "calendar",
    "tick_types",
    "depth_rows",
    "min_tick",
    "record",
}


def load_contracts(path: Path) -> list[Contract]:
    """Read `[[contracts]]` tables; unknown keys are kept in `Contract.extra` (e.g. local_symbol)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"contracts file {path} does not exist", details={"path": str(path)}) from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"contracts file {path} cannot be read: {e}", details={"path": str(path)}) from e
    tables = data.get("contracts", [])
    if not isinstance(tables, list):
        raise ConfigError(f"contracts file {path}: 'contracts' must be an array of tables")
    contracts = [_contract(table, i, path) for i, table in enumerate(tables)]
    seen: set[int] = set()
    for contract in contracts:
        if contract.con_id in seen:
            raise ConfigError(f"contracts file {path}: con_id {contract.con_id} appears twice")
        seen.add(contract.con_id)
    return contracts


def _contract(table: dict[str, Any], index: int, path: Path) -> Contract:
    where = f"contracts file {path}, contract #{index + 1}"
    try:
        con_id = table["con_id"]
        symbol = table["symbol"]
    except KeyError as e:
        raise ConfigError(f"{where}: {e.args[0]} is required") from None
    if isinstance(con_id, bool) or not isinstance(con_id, int) or con_id <= 0:
        raise ConfigError(f"{where}: con_id {con_id!r} must be a positive integer")
    try:
        tick_types = TickType.parse_list(table.get("tick_types", ["bid_ask", "last"]))
    except ValidationError as e:
        raise ConfigError(f"{where}: {e.message}") from e
    min_tick = float(table.get("min_tick", 0.01))
    if min_tick <= 0:
        raise ConfigError(f"{where}: min_tick {min_tick} must be positive")
    record = table.get("record", True)
    if not isinstance(record, bool):
        raise ConfigError(f"{where}: record {record!r} must be true or false")
    return Contract(
        con_id=con_id,
        symbol=str(symbol),
        sec_type=str(table.get("sec_type", "STK")),
        exchange=str(table.get("exchange", "SMART")),
        currency=str(table.get("currency", "USD")),
        calendar=str(table.get("calendar", "XNYS")),
        tick_types=tick_types,
        depth_rows=int(table.get("depth_rows", 0)),
        min_tick=min_tick,
        record=record,
        extra={k: v for k, v in table.items() if k not in _KNOWN},
    )
