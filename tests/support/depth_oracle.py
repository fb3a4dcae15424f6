"""A minimal position-based depth book, independent of ib_stream.analytics.book: an oracle for tests."""

from __future__ import annotations

from typing import Any

Tick = dict[str, Any]


class DepthBook:
    """A tiny position-based book that applies `depth` ticks (the test oracle for `OrderBook`).

    insert shifts the rows at and below `position` down; update replaces row `position`; delete
    removes it and shifts the rest up. A stream joined mid-way (no initial inserts) updates rows
    the book has not seen: they are created, and the rows above stay unknown (None) until updated.
    """

    def __init__(self, max_rows: int | None = None) -> None:
        self.max_rows = max_rows
        self.sides: dict[str, list[tuple[float, float, str] | None]] = {"bid": [], "ask": []}
        self.anomalies = 0  # deletes of rows the book does not have

    def apply(self, tick: Tick) -> None:
        """Apply one depth tick."""
        rows = self.sides[tick["side"]]
        position, operation = tick["position"], tick["operation"]
        row = (tick["price"], tick["size"], tick.get("market_maker", ""))
        if operation == "delete":
            if position < len(rows):
                del rows[position]
            else:
                self.anomalies += 1
            return
        if position > len(rows) or (operation == "update" and position == len(rows)):
            rows.extend([None] * (position - len(rows) + (operation == "update")))
        if operation == "insert":
            rows.insert(position, row)
        else:
            rows[position] = row
        if self.max_rows is not None:
            del rows[self.max_rows :]

    def reset(self) -> None:
        """Empty the book (IB error 317: depth data has been reset)."""
        self.sides = {"bid": [], "ask": []}

    def rows(self, side: str) -> list[tuple[float, float, str] | None]:
        """Return one side's rows, best first, as (price, size, market_maker) or None when unknown."""
        return list(self.sides[side])

    @property
    def complete(self) -> bool:
        """Whether every row of both sides is known."""
        return all(row is not None for rows in self.sides.values() for row in rows)
