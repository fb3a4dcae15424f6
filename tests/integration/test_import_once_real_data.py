"""The same ticks through two files or two readings are stored once (the real samples in ../shared/data).

Each expected store is an independent parse of the files (csv and pandas timestamps, not the importer): the union
of what the files hold, every trade and quote once. These tests fail on importers that only knew the ledger:
`databento-trades` after `databento-mbp1` stored the session's 120 trades a second time (double volume in the
bars), `--preset truefx` after a `--map` import of the same file 1,000 more quotes.
"""

from __future__ import annotations

import collections
import gzip
from pathlib import Path
from typing import Any

import pytest

from ib_stream.analytics.request import BarsRequest
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.importers import import_file, parse_mapping, preset
from ib_stream.importers.tabular import Output, Recipe
from ib_stream.orderflow.service import OrderFlow
from ib_stream.storage import TickStore
from tests.integration.test_import_real_data import (
    CONTRACT,
    csv_rows,
    databento_mbp1,
    databento_trades,
    in_store_order,
    read_text,
    sample,
    stored,
    truefx,
)

LAST = StreamKey(CONTRACT, TickType.LAST)
QUOTES = StreamKey(CONTRACT, TickType.BID_ASK)
ES = Contract(CONTRACT, "ESU4", sec_type="FUT", exchange="CME", calendar="24/7", min_tick=0.25)


def keys(ticks: list[dict[str, Any]], *fields: str) -> collections.Counter[tuple[Any, ...]]:
    return collections.Counter(tuple(t[f] for f in ("ts", *fields)) for t in ticks)


@pytest.mark.parametrize("order", ["mbp1 first", "trades first"])
def test_databento_trades_and_mbp1_store_the_sessions_trades_once(store: TickStore, order: str) -> None:
    mbp1, trades = sample("databento-mbp1"), sample("databento-trades")
    first, second = [(mbp1, "databento-mbp1"), (trades, "databento-trades")][:: 1 if order == "mbp1 first" else -1]
    import_file(store, first[0], preset(first[1]), CONTRACT)
    report = import_file(store, second[0], preset(second[1]), CONTRACT)
    file_trades = databento_trades(csv_rows(trades))
    assert len(file_trades) == 120
    assert report.stored[LAST] == 0 and report.matched[LAST] == 120
    assert stored(store, TickType.LAST) == in_store_order(file_trades)  # the very same trades, once
    assert len(stored(store, TickType.BID_ASK)) == len(databento_mbp1(mbp1)[TickType.BID_ASK])
    # The bars' volume is the session's, not twice it.
    start, end = file_trades[0]["ts"] - file_trades[0]["ts"] % 60_000_000_000, file_trades[-1]["ts"] + 1
    bars = OrderFlow(store.engine, ES).bars(BarsRequest(CONTRACT, start, end + 60_000_000_000, "1m", ("ohlc",)))
    volume = sum(float(r["size"]) for r in csv_rows(trades) if r["action"] == "T")
    assert sum(bars.table.column("volume").to_pylist()) == pytest.approx(volume, rel=1e-12)


def test_truefx_preset_after_a_mapping_of_the_same_file_adds_nothing(store: TickStore) -> None:
    path = sample("truefx")
    mapping = Output(
        TickType.BID_ASK,
        parse_mapping("timestamp=ts,bid=bid_price,ask=ask_price"),
        time_unit="iso",
        constants={"bid_size": "0", "ask_size": "0"},
    )
    first = import_file(store, path, Recipe("custom", "--map", (mapping,), "csv"), CONTRACT, option="--map")
    assert first.stored[QUOTES] == 1_000
    again = import_file(store, path, preset("truefx"), CONTRACT)
    assert again.stored[QUOTES] == 0 and again.matched[QUOTES] == 1_000
    assert len(again.warnings) == 1  # the same file was read another way
    assert stored(store, TickType.BID_ASK) == in_store_order(truefx(path)[TickType.BID_ASK])


def test_renamed_and_recut_files_add_only_their_new_quotes(store: TickStore, tmp_path: Path) -> None:
    path = sample("truefx")
    header, *rows = read_text(path).splitlines()
    head = tmp_path / "usdjpy_head.csv"  # rows 0-599
    head.write_text("\n".join([header, *rows[:600]]) + "\n")
    tail = tmp_path / "renamed-tail.csv.gz"  # rows 400-999, compressed and renamed
    tail.write_bytes(gzip.compress(("\n".join([header, *rows[400:]]) + "\n").encode()))
    assert import_file(store, head, preset("truefx"), CONTRACT).stored[QUOTES] == 600
    cut = import_file(store, tail, preset("truefx"), CONTRACT)
    assert cut.stored[QUOTES] == 400 and cut.matched[QUOTES] == 200
    whole = import_file(store, path, preset("truefx"), CONTRACT)
    assert whole.stored[QUOTES] == 0 and whole.matched[QUOTES] == 1_000
    want = keys(truefx(path)[TickType.BID_ASK], "bid_price", "ask_price")
    assert keys(stored(store, TickType.BID_ASK), "bid_price", "ask_price") == want


def test_binance_quotes_through_a_mapping_after_the_preset_add_nothing(store: TickStore) -> None:
    path = sample("binance-quotes")
    report = import_file(store, path, preset("binance-quotes"), CONTRACT)
    mapped = Output(
        TickType.BID_ASK,
        parse_mapping("timestamp_ms_utc=ts,bid=bid_price,bid_size=bid_size,ask=ask_price,ask_size=ask_size"),
        time_unit="auto",  # the same milliseconds, read by their size
    )
    again = import_file(store, path, Recipe("custom", "--map", (mapped,), "csv"), CONTRACT, option="--map")
    assert again.stored[QUOTES] == 0 and again.matched[QUOTES] == report.stored[QUOTES] == 451
    assert len(stored(store, TickType.BID_ASK)) == 451
