"""Imports by content: each tick stored once across files and readings (with multiplicity), the store read an hour at a
time, ticks from the future refused, rows a --where leaves out counted."""

from __future__ import annotations

import collections
import csv
import random
from pathlib import Path
from typing import Any

import pytest

from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.importers import Output, Recipe, import_file, parse_mapping, preset
from ib_stream.importers.content import HOURS_HELD, StoredContent, content_key
from ib_stream.storage import TickStore
from ib_stream.store.schema import table_to_records
from ib_stream.times import iso_ns
from tests.conftest import T0_NS
from tests.unit.test_importers_orderflow import run as run_cli

C = 77
LAST = StreamKey(C, TickType.LAST)
HOUR = 3600 * NS_PER_SECOND
Trade = tuple[int, float, float]  # (ts ns, price, size): the content key of a trade


def write_trades(path: Path, trades: list[Trade], layout: str) -> Path:
    """Trades in one of three layouts: Binance (ms), a vendor layout in ns with a side, or one with ISO times."""
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        if layout == "binance":
            out.writerow(["timestamp_ms_utc", "trade_id", "price", "quantity", "buyer_maker"])
            out.writerows([ts // 1_000_000, i, price, size, i % 2 == 0] for i, (ts, price, size) in enumerate(trades))
        elif layout == "ns":
            out.writerow(["t", "px", "qty", "aggressor"])
            out.writerows([ts, price, size, "B" if i % 3 else "A"] for i, (ts, price, size) in enumerate(trades))
        else:
            out.writerow(["when", "px", "qty"])
            out.writerows([iso_ns(ts), price, size] for ts, price, size in trades)
    return path


RECIPES = {
    "binance": preset("binance-trades"),
    "ns": Recipe("ns", "t", (Output(TickType.LAST, parse_mapping("t=ts,px=price,qty=size,aggressor=side"), "ns"),)),
    "iso": Recipe("iso", "t", (Output(TickType.LAST, parse_mapping("when=ts,px=price,qty=size"), "iso"),)),
}


def stored_trades(store: TickStore) -> collections.Counter[Trade]:
    records = table_to_records(store.engine.read_stream(LAST, 0, 2**62))
    return collections.Counter((r["ts"], r["price"], r["size"]) for r in records)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_files_sharing_trades_store_each_trade_as_often_as_the_file_holding_it_most(
    store: TickStore, tmp_path: Path, seed: int
) -> None:
    # Trades from a small key space over 7 hours (more than the hours held in memory), so identical trades in one
    # millisecond are common; files are random sub-multisets of them, time-ordered (one reversed), in three layouts.
    rng = random.Random(seed)
    start = T0_NS - 9 * HOUR
    keys: list[Trade] = [
        (start + rng.randrange(7 * 3600 * 1000) * 1_000_000, 100 + rng.randrange(3) * 0.5, float(1 + rng.randrange(2)))
        for _ in range(600)
    ]
    recorded = collections.Counter(rng.choices(keys, k=150))
    store.append_batch_sync(C, "last", [{"ts": t, "price": p, "size": s} for t, p, s in recorded.elements()], "sim")
    want = recorded
    for n in range(5):
        chosen = sorted(rng.choices(keys, k=rng.randrange(100, 400)), reverse=n == 3)
        layout = ("binance", "ns", "iso")[n % 3]
        report = import_file(store, write_trades(tmp_path / f"f{n}.csv", chosen, layout), RECIPES[layout], C)
        held = collections.Counter(chosen)
        new = held - want  # what the file holds more often than the store did
        assert report.stored[LAST] == sum(new.values()), f"file {n}"
        assert report.matched[LAST] == len(chosen) - sum(new.values())
        want = want | held
        assert stored_trades(store) == want, f"after file {n}"


def test_each_hour_of_a_time_ordered_file_is_read_once_and_few_are_held(
    store: TickStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = T0_NS - 12 * HOUR
    trades = [(start + i * 97 * NS_PER_SECOND, 100.0, 1.0) for i in range(10 * 3600 // 97)]
    loads: list[int] = []
    held: list[int] = []
    original = StoredContent._load

    def load(self: StoredContent, hour: int) -> collections.Counter[Any]:
        loads.append(hour)
        held.append(len(self._hours))
        return original(self, hour)

    monkeypatch.setattr(StoredContent, "_load", load)
    import_file(store, write_trades(tmp_path / "t.csv", trades, "ns"), RECIPES["ns"], C, batch_size=50)
    hours = sorted({ts - ts % HOUR for ts, _, _ in trades})
    assert loads == hours and max(held) <= HOURS_HELD


def test_the_content_key_leaves_out_attributes_and_fills_defaults() -> None:
    with_side = {"ts": 5, "price": 10, "size": 2, "side": 1, "exchange": "X"}
    assert content_key(TickType.LAST, with_side) == content_key(TickType.LAST, {"ts": 5, "price": 10.0, "size": 2.0})
    depth = {"ts": 5, "side": "bid", "position": 0, "operation": "insert", "price": 1.0, "size": 2.0}
    assert content_key(TickType.DEPTH, depth) == (5, "bid", 0, "insert", 1.0, 2.0, "", False)
    assert content_key(TickType.DEPTH, depth | {"by_price": True}) != content_key(TickType.DEPTH, depth)


def test_ticks_from_the_future_are_refused_until_their_time_has_come(
    store: TickStore, clock: ManualClock, tmp_path: Path
) -> None:
    now = clock.now_ns()
    trades = [(now - 60 * NS_PER_SECOND, 1.0, 1.0), (now + 60 * NS_PER_SECOND, 2.0, 1.0)]  # the last ns allowed
    trades += [(now + 60 * NS_PER_SECOND + 1, 3.0, 1.0), (now + 86_400 * NS_PER_SECOND, 4.0, 1.0)]
    path = write_trades(tmp_path / "t.csv", trades, "ns")
    report = import_file(store, path, RECIPES["ns"], C)  # the default of imports.max_future_skew_seconds: 60 s
    reason = "last: timestamp is in the future (after now + 60 s, imports.max_future_skew_seconds)"
    assert report.stored[LAST] == 2 and dict(report.skipped) == {reason: 2}
    assert report.examples[reason].startswith("tick 2: '20")
    assert stored_trades(store) == collections.Counter(trades[:2])
    clock.advance(2 * 86_400)
    later = import_file(store, path, RECIPES["ns"], C)  # the same file, once their time has come
    assert later.stored[LAST] == 2 and later.duplicates[LAST] == 2 and not later.skipped
    assert stored_trades(store) == collections.Counter(trades)
    assert import_file(store, path, RECIPES["ns"], C).duplicates[LAST] == 4


def test_the_imports_skew_setting_moves_the_limit(store: TickStore, clock: ManualClock, tmp_path: Path) -> None:
    now = clock.now_ns()
    trades = [(now + 400 * NS_PER_SECOND, 3.0, 1.0), (now + 501 * NS_PER_SECOND, 4.0, 1.0)]
    path = write_trades(tmp_path / "t.csv", trades, "ns")
    report = import_file(store, path, RECIPES["ns"], C, future_skew_ns=500 * NS_PER_SECOND)
    assert report.stored[LAST] == 1 and sum(report.skipped.values()) == 1
    assert "after now + 500 s" in next(iter(report.skipped))


WHERE_CSV = """\
t,px,qty,kind
1700000000000000000,1.5,1,T
1700000000100000000,1.5,1,Q
1700000000200000000,1.5,1,T
1700000000300000000,1.5,1,Q
1700000000400000000,1.5,1,
"""


def test_rows_left_out_by_where_are_counted_and_shown(store: TickStore, tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text(WHERE_CSV)
    recipe = Recipe(
        "custom", "t", (Output(TickType.LAST, parse_mapping("t=ts,px=price,qty=size"), "ns", {}, {"kind": "T"}),)
    )
    report = import_file(store, path, recipe, C)
    assert report.stored[LAST] == 2 and not report.skipped
    assert dict(report.filtered) == {"last: kind is not T (--where)": 3}
    assert report.filtered_examples == {"last: kind is not T (--where)": "row 2: 'Q'"}


def test_cli_shows_the_rows_left_out_by_where(config: Any, tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text(WHERE_CSV)
    result = run_cli(config, "import", "file", str(path), "--contract", str(C), "--tick-type", "last",
                     "--map", "t=ts,px=price,qty=size", "--where", "kind=T", "--time-unit", "ns")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 ticks stored" in result.output and "3 rows filtered out by --where" in result.output
    assert "filtered out by --where" in result.output
    line = next(line for line in result.output.splitlines() if "kind is not T" in line)
    assert line.split()[-4:] == ["3", "row", "2:", "'Q'"]
