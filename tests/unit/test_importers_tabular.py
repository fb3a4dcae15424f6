"""CSV / JSON-lines imports through a column mapping: time formats, value kinds, filters, bad rows, the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import Result

from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import ValidationError
from ib_stream.importers import PRESETS, Output, Recipe, import_file, parse_mapping, preset
from ib_stream.importers.values import BadValue, auto_ns, epoch_ns, parse_iso_ns, strptime_ns, trade_side
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store.schema import table_to_records
from tests.unit.test_importers_orderflow import run as run_cli

C = 42


def stored(store: TickStore, tick_type: TickType, contract_id: int = C) -> list[dict[str, Any]]:
    return table_to_records(store.engine.read_stream(StreamKey(contract_id, tick_type), 0, 2**62))


def custom(tick_type: TickType, mapping: str, **options: Any) -> Recipe:
    header = options.pop("header", None)
    file_format = options.pop("file_format", None)
    return Recipe("custom", "test", (Output(tick_type, parse_mapping(mapping), **options),), file_format, header)


# ---- times ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2024-07-01T23:58:01.218485389Z",
        "2024-07-01T23:58:01.2Z",
        "2013-01-01 22:00:00.295000+00:00",
        "2022-03-02T01:47:53+00:00",
        "2022-03-02T01:47:53-05:30",
        "2022-03-02T01:47:53+0100",
        "2022-03-02 01:47:53",
        "2024-02-29T00:00:00.000000001Z",
    ],
)
def test_iso_times_are_exact_to_the_nanosecond(text: str) -> None:
    expected = pd.Timestamp(text)
    expected = expected.tz_localize("UTC") if expected.tzinfo is None else expected
    assert parse_iso_ns(text) == expected.value


@pytest.mark.parametrize("text", ["2024-02-30T00:00:00Z", "yesterday", "2024-07-01", "1700000000", ""])
def test_bad_iso_times_are_refused(text: str) -> None:
    with pytest.raises(BadValue):
        parse_iso_ns(text)


def test_epoch_numbers_in_every_unit() -> None:
    assert epoch_ns("1610064000278", 1_000_000) == 1_610_064_000_278_000_000
    assert epoch_ns("1610064000278.5", 1_000_000) == 1_610_064_000_278_500_000
    assert epoch_ns(1_610_064_000, 1_000_000_000) == 1_610_064_000_000_000_000
    for value, unit_ns in [(1_610_064_000, 10**9), (1_610_064_000_278, 10**6), (1_610_064_000_278_123, 10**3)]:
        assert auto_ns(value) == auto_ns(str(value)) == value * unit_ns
    assert auto_ns(1_610_064_000_278_123_456) == 1_610_064_000_278_123_456
    assert auto_ns("2021-01-08T00:00:00.278Z") == 1_610_064_000_278_000_000
    assert strptime_ns("20130101 22:00:00.295", "%Y%m%d %H:%M:%S.%f") == pd.Timestamp("2013-01-01 22:00:00.295Z").value


@pytest.mark.parametrize(
    ("value", "side"),
    [
        *[("buy", 1), ("B", 1), (" Bid ", 1), ("+1", 1), (1, 1)],
        *[("sell", -1), ("A", -1), ("ask", -1), (-1, -1)],
        *[("N", None), ("", None), (None, None), (0, None)],
    ],
)
def test_trade_sides(value: Any, side: int | None) -> None:
    assert trade_side(value) == side


# ---- CSV --------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


TRADES_CSV = """time,px,qty,aggressor,venue,kind
1700000000000,101.5,2,B,XCME,T
1700000000100,101.25,1,A,XCME,T
1700000000200,101.0,3,N,XCME,T
1700000000300,101.0,3,B,XCME,Q
1700000000400,abc,1,B,XCME,T
,101.0,1,B,XCME,T
1700000000500,101.0,-2,B,XCME,T
1700000000600,101.0,1,hold,XCME,T
1700000000700,101.0,1,B,XCME
1700000000800,101.0,1,S,,T
"""
TRADES_MAP = "time=ts,px=price,qty=size,aggressor=side,venue=exchange"


@pytest.mark.parametrize("name", ["trades.csv", "trades.csv.gz", "trades.txt"])
def test_a_mapped_csv_with_a_filter_and_bad_rows(store: TickStore, tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, TRADES_CSV)
    report = import_file(store, path, custom(TickType.LAST, TRADES_MAP, time_unit="ms", where={"kind": "T"}), C)
    ticks = stored(store, TickType.LAST)
    assert [(t["ts"], t["price"], t["size"], t["side"], t["exchange"]) for t in ticks] == [
        (1_700_000_000_000_000_000, 101.5, 2.0, 1, "XCME"),
        (1_700_000_000_100_000_000, 101.25, 1.0, -1, "XCME"),
        (1_700_000_000_200_000_000, 101.0, 3.0, None, "XCME"),
        (1_700_000_000_800_000_000, 101.0, 1.0, -1, ""),
    ]
    assert dict(report.skipped) == {
        "last: price is not a number": 1,
        "last: missing timestamp": 1,
        "last: size must not be negative": 1,
        "last: side is not a known side": 1,
        "file: row has 5 columns, the header 6": 1,
    }
    assert report.rows_read == 10
    assert report.examples["last: price is not a number"] == "row 5: 'abc'"


def test_constants_and_a_headerless_file(store: TickStore, tmp_path: Path) -> None:
    path = write(
        tmp_path / "quotes.csv",
        "USD/JPY,20130101 22:00:00.295,86.655,86.728\nUSD/JPY,20130101 22:02:35.907,86.657,86.73\n",
    )
    import_file(store, path, preset("truefx-raw"), C)
    ticks = stored(store, TickType.BID_ASK)
    assert [(t["ts"], t["bid_price"], t["ask_price"], t["bid_size"], t["ask_size"]) for t in ticks] == [
        (pd.Timestamp("2013-01-01T22:00:00.295Z").value, 86.655, 86.728, 0.0, 0.0),
        (pd.Timestamp("2013-01-01T22:02:35.907Z").value, 86.657, 86.73, 0.0, 0.0),
    ]


def test_tsv_and_set_values_read_by_kind(store: TickStore, tmp_path: Path) -> None:
    path = write(tmp_path / "q.tsv", "t\tb\ta\n2024-01-02T03:04:05Z\t1.5\t1.75\n")
    recipe = custom(
        TickType.BID_ASK,
        "t=ts,b=bid_price,a=ask_price",
        constants={"bid_size": "10", "ask_size": "0", "bid_past_low": "true"},
    )
    import_file(store, path, recipe, C)
    (tick,) = stored(store, TickType.BID_ASK)
    assert (tick["bid_size"], tick["ask_size"], tick["bid_past_low"], tick["ask_past_high"]) == (10.0, 0.0, True, False)


def test_ib_depth_rows_keep_position_semantics(store: TickStore, tmp_path: Path) -> None:
    text = (
        "time_recv_utc,position,market_maker,operation,side,price,size\n"
        "2022-02-21T20:59:20.824000+00:00,0,,0,1,1.13005,5500000.0\n"
        "2022-02-21T20:59:20.900000+00:00,1,,1,0,1.1301,1000000.0\n"
        "2022-02-21T20:59:21.000000+00:00,0,,2,1,1.13005,0.0\n"
        "2022-02-21T20:59:21.100000+00:00,0,,7,1,1.13005,0.0\n"
    )
    report = import_file(store, write(tmp_path / "depth.csv", text), preset("ib-depth"), C)
    ticks = stored(store, TickType.DEPTH)
    assert [(t["position"], t["operation"], t["side"], t["price"], t["size"], t["by_price"]) for t in ticks] == [
        (0, "insert", "bid", 1.13005, 5500000.0, False),
        (1, "update", "ask", 1.1301, 1000000.0, False),
        (0, "delete", "bid", 1.13005, 0.0, False),
    ]
    assert dict(report.skipped) == {"depth: operation is not a known depth operation": 1}


def test_a_one_sided_mbp1_row_gives_its_trade_but_no_quote(store: TickStore, tmp_path: Path) -> None:
    header = "ts_recv,ts_event,action,side,price,size,bid_px_00,ask_px_00,bid_sz_00,ask_sz_00\n"
    rows = "x,2024-07-01T23:58:01.218218853Z,T,A,5528.75,2,,5528.75,0,6\n"
    report = import_file(store, write(tmp_path / "mbp.csv", header + rows), preset("databento-mbp1"), C)
    assert dict(report.skipped) == {"bid_ask: missing bid_price": 1}
    assert [(t["ts"], t["price"], t["side"]) for t in stored(store, TickType.LAST)] == [
        (pd.Timestamp("2024-07-01T23:58:01.218218853Z").value, 5528.75, -1)
    ]
    assert stored(store, TickType.BID_ASK) == []


# ---- JSON -------------------------------------------------------------------------------------------

JSON_ROWS = [
    {"time": "2022-03-02T01:47:53+00:00", "price": 6.2, "size": 30.0, "attr": {"pastLimit": True}, "cond": "I"},
    {"time": 1646185674, "price": 6.09, "size": 30.0, "attr": {"pastLimit": False}, "cond": ""},
    {"time": "2022-03-02T01:47:55+00:00", "price": 6.1, "size": 5.0},
]


@pytest.mark.parametrize("layout", ["jsonl", "jsonl.gz", "json"])
def test_json_lines_and_arrays_with_nested_fields(store: TickStore, tmp_path: Path, layout: str) -> None:
    if layout == "json":
        text = json.dumps(JSON_ROWS)
    else:
        text = "\n".join(json.dumps(r) for r in JSON_ROWS) + "\n{not json\n[1, 2]\n"
    path = write(tmp_path / f"trades.{layout}", text)
    recipe = custom(TickType.LAST, "time=ts,price=price,size=size,attr.pastLimit=past_limit,cond=conditions")
    report = import_file(store, path, recipe, C)
    ticks = stored(store, TickType.LAST)
    assert [(t["ts"], t["price"], t["past_limit"], t["conditions"]) for t in ticks] == [
        (1_646_185_673_000_000_000, 6.2, True, "I"),
        (1_646_185_674_000_000_000, 6.09, False, ""),
        (1_646_185_675_000_000_000, 6.1, False, ""),
    ]
    if layout != "json":
        assert dict(report.skipped) == {"file: line is not JSON": 1, "file: line is not a JSON object": 1}


# ---- recipes that cannot work are refused before anything is stored ---------------------------------------


@pytest.mark.parametrize(
    ("mapping", "options", "fragment"),
    [
        ("time=ts,px=price,qty=size,aggressor=sidez", {}, "sidez names no field of last"),
        ("px=price,qty=size", {}, "maps no column to ts"),
        ("time=ts,px=price", {}, "leaves size of last unmapped"),
        ("time=ts,px=price,volume=size", {}, "needs column volume, which the file lacks"),
        ("time=ts,px=price,qty=size", {"time_unit": "fortnights"}, "fortnights is not one of auto"),
    ],
)
def test_a_recipe_that_cannot_work_is_refused(
    store: TickStore, tmp_path: Path, mapping: str, options: dict[str, Any], fragment: str
) -> None:
    path = write(tmp_path / "trades.csv", TRADES_CSV)
    with pytest.raises(ValidationError) as raised:
        import_file(store, path, custom(TickType.LAST, mapping, **options), C, option="--map")
    assert fragment in raised.value.message
    assert store.buffer.streams() == []


def test_a_preset_that_does_not_fit_the_file_names_the_preset(store: TickStore, tmp_path: Path) -> None:
    path = write(tmp_path / "trades.csv", TRADES_CSV)
    with pytest.raises(ValidationError, match="--preset binance-quotes needs column timestamp_ms_utc"):
        import_file(store, path, preset("binance-quotes"), C)


@pytest.mark.parametrize("text", ["a", "a=", "=b", "a=price,b=price"])
def test_bad_mappings(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_mapping(text)


# ---- command line -----------------------------------------------------------------------------------


def cli(config: StorageConfig, *args: str) -> Result:
    return run_cli(config, "import", *args)


def test_cli_file_with_a_mapping(config: StorageConfig, tmp_path: Path) -> None:
    path = write(tmp_path / "trades.csv", TRADES_CSV)
    args = ["file", str(path), "--contract", "42", "--map", TRADES_MAP, "--tick-type", "last"]
    result = cli(config, *args, "--time-unit", "ms", "--where", "kind=T")
    assert result.exit_code == 0, result.output
    assert "10 rows read, 4 ticks stored, 0 already stored, 5 rows skipped" in result.stdout
    assert "last: price is not a number" in result.stdout and "row 5: 'abc'" in result.stdout
    again = cli(config, *args, "--time-unit", "ms", "--where", "kind=T")
    assert "0 ticks stored, 4 already stored" in again.stdout


def test_cli_only_some_streams_of_a_preset(config: StorageConfig, tmp_path: Path) -> None:
    header = "ts_recv,ts_event,action,side,price,size,bid_px_00,ask_px_00,bid_sz_00,ask_sz_00\n"
    rows = "x,2024-07-01T23:58:01.218218853Z,T,B,5528.75,2,5528.5,5528.75,29,6\n"
    path = write(tmp_path / "mbp.csv", header + rows)
    result = cli(config, "file", str(path), "--contract", "42", "--preset", "databento-mbp1", "--only", "bid_ask")
    assert result.exit_code == 0, result.output
    assert "42 bid_ask" in result.stdout and "42 last" not in result.stdout
    with TickStore(config) as store:
        assert len(stored(store, TickType.BID_ASK)) == 1 and stored(store, TickType.LAST) == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "error: --preset None or --map is needed"),
        (["--preset", "binance-trades", "--map", "a=ts"], "or --map is needed, and only one of them"),
        (["--preset", "nasdaq"], "error: --preset nasdaq is not a preset (use one of binance-trades"),
        (["--preset", "binance-trades", "--time-unit", "ms"], "error: --time-unit ms applies to --map only"),
        (["--map", "time=ts"], "error: --tick-type None is required with --map"),
        (
            ["--map", "time=ts,px=price,qty=size", "--tick-type", "trades"],
            "error: --tick-type trades is not a tick type",
        ),
        (
            ["--map", "time=ts,px=price,qty=size", "--tick-type", "last", "--format", "xml"],
            "--format xml is not one of",
        ),
        (["--preset", "databento-mbp1", "--only", "depth"], "error: --only depth selects none of databento-mbp1"),
    ],
)
def test_cli_bad_options_exit_2(config: StorageConfig, tmp_path: Path, args: list[str], fragment: str) -> None:
    path = write(tmp_path / "trades.csv", TRADES_CSV)
    result = cli(config, "file", str(path), "--contract", "42", *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert "Traceback" not in result.output


def test_cli_missing_file_exits_2(config: StorageConfig, tmp_path: Path) -> None:
    result = cli(config, "file", str(tmp_path / "nope.csv"), "--contract", "1", "--preset", "truefx")
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_cli_lists_every_preset(config: StorageConfig) -> None:
    result = cli(config, "presets")
    assert result.exit_code == 0, result.output
    for name, recipe in PRESETS.items():
        assert name in result.stdout and recipe.description in result.stdout
