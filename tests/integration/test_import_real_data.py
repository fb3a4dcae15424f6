"""Every import preset on its real file from ../shared/data: the stored ticks equal an independent parse of the file."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ib_stream.domain import TICK_FIELDS, StreamKey, TickType
from ib_stream.importers import import_file, preset
from ib_stream.storage import TickStore
from ib_stream.store.schema import table_to_records
from tests.conftest import requires_shared_data

CONTRACT = 9001
Expected = dict[TickType, list[dict[str, Any]]]


def read_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode()


def csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(read_text(path))))


def ns(text: str) -> int:
    stamp = pd.Timestamp(text)
    return (stamp if stamp.tzinfo is not None else stamp.tz_localize("UTC")).value


def tick(tick_type: TickType, **fields: Any) -> dict[str, Any]:
    """A tick with every field of its type: the given values, else the field's default."""
    return {"ts": fields.pop("ts")} | {s.name: fields.get(s.name, s.default) for s in TICK_FIELDS[tick_type]}


# ---- independent parses, one per layout (csv / json and pandas timestamps, not the importer) -----------


def binance_trades(path: Path) -> Expected:
    return {
        TickType.LAST: [
            tick(
                TickType.LAST,
                ts=int(r["timestamp_ms_utc"]) * 1_000_000,
                price=float(r["price"]),
                size=float(r["quantity"]),
                side={"True": -1, "False": 1}[r["buyer_maker"]],
            )
            for r in csv_rows(path)
        ]
    }


def binance_quotes(path: Path) -> Expected:
    return {
        TickType.BID_ASK: [
            tick(
                TickType.BID_ASK,
                ts=int(r["timestamp_ms_utc"]) * 1_000_000,
                bid_price=float(r["bid"]),
                bid_size=float(r["bid_size"]),
                ask_price=float(r["ask"]),
                ask_size=float(r["ask_size"]),
            )
            for r in csv_rows(path)
        ]
    }


def databento_trades(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [
        tick(
            TickType.LAST,
            ts=ns(r["ts_event"]),
            price=float(r["price"]),
            size=float(r["size"]),
            side={"B": 1, "A": -1, "N": None}[r["side"]],
        )
        for r in rows
        if r["action"] == "T"
    ]


def databento_mbp1(path: Path) -> Expected:
    rows = csv_rows(path)
    quotes = [
        tick(
            TickType.BID_ASK,
            ts=ns(r["ts_event"]),
            bid_price=float(r["bid_px_00"]),
            bid_size=float(r["bid_sz_00"]),
            ask_price=float(r["ask_px_00"]),
            ask_size=float(r["ask_sz_00"]),
        )
        for r in rows
    ]
    return {TickType.BID_ASK: quotes, TickType.LAST: databento_trades(rows)}


def truefx(path: Path) -> Expected:
    return {
        TickType.BID_ASK: [
            tick(
                TickType.BID_ASK,
                ts=ns(r["timestamp"]),
                bid_price=float(r["bid"]),
                ask_price=float(r["ask"]),
                bid_size=0.0,
                ask_size=0.0,
            )
            for r in csv_rows(path)
        ]
    }


def ib_bid_ask(path: Path) -> Expected:
    rows = [json.loads(line) for line in read_text(path).splitlines()]
    return {
        TickType.BID_ASK: [
            tick(
                TickType.BID_ASK,
                ts=ns(r["time"]),
                bid_price=float(r["priceBid"]),
                bid_size=float(r["sizeBid"]),
                ask_price=float(r["priceAsk"]),
                ask_size=float(r["sizeAsk"]),
                bid_past_low=r["tickAttribBidAsk"]["bidPastLow"],
                ask_past_high=r["tickAttribBidAsk"]["askPastHigh"],
            )
            for r in rows
        ]
    }


def ib_trades(path: Path) -> Expected:
    rows = [json.loads(line) for line in read_text(path).splitlines()]
    return {
        TickType.LAST: [
            tick(
                TickType.LAST,
                ts=ns(r["time"]),
                price=float(r["price"]),
                size=float(r["size"]),
                exchange=r["exchange"],
                conditions=r["specialConditions"],
                past_limit=r["tickAttribLast"]["pastLimit"],
                unreported=r["tickAttribLast"]["unreported"],
            )
            for r in rows
        ]
    }


def ib_depth(path: Path) -> Expected:
    return {
        TickType.DEPTH: [
            tick(
                TickType.DEPTH,
                ts=ns(r["time_recv_utc"]),
                position=int(r["position"]),
                market_maker=r["market_maker"],
                operation=["insert", "update", "delete"][int(r["operation"])],
                side=["ask", "bid"][int(r["side"])],
                price=float(r["price"]),
                size=float(r["size"]),
            )
            for r in csv_rows(path)
        ]
    }


CASES: dict[str, tuple[str, str, Callable[[Path], Expected]]] = {
    "binance-trades": ("binance_btcusdt", "spot_trades_20210108.csv.gz", binance_trades),
    "binance-quotes": ("binance_btcusdt", "spot_quotes_20210108.csv.gz", binance_quotes),
    "databento-trades": (
        "databento_glbx_es",
        "futures_trades_2024-07-01T23-58_2024-07-02T00-02.csv.gz",
        lambda p: {TickType.LAST: databento_trades(csv_rows(p))},
    ),
    "databento-mbp1": ("databento_glbx_es", "futures_mbp-1_2024-07-01T23-58_2024-07-02T00-02.csv.gz", databento_mbp1),
    "truefx": ("truefx_usdjpy", "usdjpy_quotes_20130101.csv", truefx),
    "ib-hist-bidask": ("ib_mktdata", "hist_bid_ask_ticks_20220302.jsonl.gz", ib_bid_ask),
    "ib-hist-trades": ("ib_mktdata", "hist_trade_ticks_20220302.jsonl.gz", ib_trades),
    "ib-depth": ("ib_depth_eurusd", "eurusd_mktdepth_20220221.csv", ib_depth),
}


def sample(name: str) -> Path:
    subdir, filename, _ = CASES[name]
    return requires_shared_data(subdir) / filename


def stored(store: TickStore, tick_type: TickType) -> list[dict[str, Any]]:
    records = table_to_records(store.engine.read_stream(StreamKey(CONTRACT, tick_type), 0, 2**62))
    return [{k: v for k, v in r.items() if k not in ("seq", "recv_ts", "source")} for r in records]


def in_store_order(ticks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(ticks, key=lambda t: t["ts"])  # stable: file order within a timestamp, as seq keeps it


def test_every_preset_has_a_real_file() -> None:
    from ib_stream.importers import PRESETS

    assert set(PRESETS) - set(CASES) == {"truefx-raw"}  # TrueFX's own download layout: no sample (unit-tested)


@pytest.mark.parametrize("name", list(CASES))
def test_preset_on_its_real_file_stores_exactly_the_file(store: TickStore, name: str) -> None:
    path = sample(name)
    expected = CASES[name][2](path)
    report = import_file(store, path, preset(name), CONTRACT, batch_size=500)
    assert dict(report.skipped) == {}
    assert report.rows_read == max(len(ticks) for ticks in expected.values())
    for tick_type, ticks in expected.items():
        assert stored(store, tick_type) == in_store_order(ticks), f"{name} {tick_type.value}"
        assert report.stored[StreamKey(CONTRACT, tick_type)] == len(ticks)
    again = import_file(store, path, preset(name), CONTRACT, batch_size=333)
    assert again.ticks_stored == 0 and again.duplicates == report.stored


def test_binance_signed_volume_equals_the_recorded_aggressor_side(store: TickStore) -> None:
    path = sample("binance-trades")
    import_file(store, path, preset("binance-trades"), CONTRACT)
    frame = pd.read_csv(path, dtype={"quantity": str})
    signed = sum(
        float(q) * (-1 if maker else 1) for q, maker in zip(frame["quantity"], frame["buyer_maker"], strict=True)
    )
    assert sum(t["size"] * t["side"] for t in stored(store, TickType.LAST)) == pytest.approx(signed, abs=1e-9)
    assert sum(1 for t in stored(store, TickType.LAST) if t["side"] == -1) == int(frame["buyer_maker"].sum())


def test_ib_depth_replayed_by_position_gives_the_recorded_final_book(store: TickStore) -> None:
    path = sample("ib-depth")
    import_file(store, path, preset("ib-depth"), CONTRACT)
    book: dict[tuple[str, int], tuple[float, float]] = {}
    for t in stored(store, TickType.DEPTH):
        assert t["operation"] == "update"  # the recording holds only updates (see the data README)
        book[(t["side"], t["position"])] = (t["price"], t["size"])
    final = csv_rows(path.with_name("eurusd_mktdepth_final_book_20220221.csv"))
    assert book == {
        ({"0": "ask", "1": "bid"}[r["side"]], int(r["position"])): (float(r["price"]), float(r["size"])) for r in final
    }


def test_mbp1_quotes_only_leaves_the_trades_to_the_trades_file(store: TickStore) -> None:
    mbp1 = sample("databento-mbp1")
    import_file(store, mbp1, preset("databento-mbp1"), CONTRACT, only=(TickType.BID_ASK,))
    import_file(store, sample("databento-trades"), preset("databento-trades"), CONTRACT)
    expected = databento_mbp1(mbp1)
    assert stored(store, TickType.LAST) == in_store_order(expected[TickType.LAST])
    assert len(stored(store, TickType.BID_ASK)) == len(expected[TickType.BID_ASK])
