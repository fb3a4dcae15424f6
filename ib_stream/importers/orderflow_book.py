"""Importers: parse the bid/ask level lists of order-flow recordings and turn book states into price-level depth.

A side's levels are text holding a list, as JSON or as a Python literal (read with
`ast.literal_eval`, never `eval`), in any of these shapes (numbers may also be numeric strings):

    [[price, size, liquidation_count, order_count], ...]   extra items are ignored
    [[price, size], ...]
    [{"price": p, "size": s}, ...]
    [{"p": p, "s": s}, ...]

A size of 0 means the level is absent (delete). The diff of two states of one side gives the
depth operations, in book order (bids from the highest price down, asks from the lowest up):
a new price is an `insert`, a changed size an `update`, a price gone (or sized 0) a `delete`.
"""

from __future__ import annotations

import ast
import json
from typing import Any, Final, Literal

from ib_stream.importers.values import BadValue, finite_float

Levels = dict[float, float]  # price -> size of one side of a book
Operation = tuple[str, float, float]  # (insert|update|delete, price, size); a delete has size 0
BookRows = Literal["full", "delta"]
BOOK_ROWS: Final = ("full", "delta")
_LITERAL_ERRORS: Final = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


def parse_levels(text: Any) -> Levels:
    """Parse one side's levels into {price: size} (sizes of 0 kept); raise BadValue naming what is wrong."""
    if text is None:
        raise BadValue("missing levels", text)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise BadValue("levels are not text", text) from None
    if not isinstance(text, str):
        raise BadValue("levels are not text", text)
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = ast.literal_eval(text.strip())
        except _LITERAL_ERRORS:
            raise BadValue("levels are neither JSON nor a Python literal", text) from None
    if not isinstance(data, list | tuple):
        raise BadValue("levels are not a list", text)
    levels: Levels = {}
    for level in data:
        price, size = _price_size(level)
        if price in levels:
            raise BadValue("duplicate price level", level)
        levels[price] = size
    return levels


def _price_size(level: Any) -> tuple[float, float]:
    if isinstance(level, dict):
        raw_price = level.get("price", level.get("p"))
        raw_size = level.get("size", level.get("s"))
        if raw_price is None or raw_size is None:
            raise BadValue("level has no price or size", level)
    elif isinstance(level, list | tuple) and len(level) >= 2:
        raw_price, raw_size = level[0], level[1]
    else:
        raise BadValue("level is not [price, size, ...] or {price, size}", level)
    price = finite_float(raw_price, "level price", level)
    size = finite_float(raw_size, "level size", level)
    if price <= 0:
        raise BadValue("level price is not positive", level)
    if size < 0:
        raise BadValue("negative size", level)
    return price, size


def diff_full(old: Levels, new: Levels, descending: bool) -> tuple[list[Operation], Levels]:
    """Operations turning side `old` into the complete side `new` (size 0 = absent); return them and the new side."""
    state = {price: size for price, size in new.items() if size > 0}
    operations: list[Operation] = []
    for price in sorted(old.keys() | state.keys(), reverse=descending):
        size = state.get(price)
        if size is None:
            operations.append(("delete", price, 0.0))
        elif price not in old:
            operations.append(("insert", price, size))
        elif old[price] != size:
            operations.append(("update", price, size))
    return operations, state


def diff_delta(old: Levels, changes: Levels, descending: bool) -> tuple[list[Operation], Levels]:
    """Operations applying the changed levels `changes` (size 0 = delete) to side `old`; return them and the new side.

    A delete of a price the book does not hold changes nothing and gives no operation.
    """
    state = dict(old)
    operations: list[Operation] = []
    for price in sorted(changes, reverse=descending):
        size = changes[price]
        if size == 0:
            if price in state:
                del state[price]
                operations.append(("delete", price, 0.0))
        elif price not in state:
            state[price] = size
            operations.append(("insert", price, size))
        elif state[price] != size:
            state[price] = size
            operations.append(("update", price, size))
    return operations, state


def depth_tick(ts: int, side: str, operation: Operation) -> dict[str, Any]:
    """A price-level depth tick (`by_price`; position is not used and is 0)."""
    op, price, size = operation
    return {
        "ts": ts,
        "side": side,
        "position": 0,
        "operation": op,
        "price": price,
        "size": size,
        "market_maker": "",
        "by_price": True,
    }
