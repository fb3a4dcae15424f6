"""Order-flow SQLite recordings: every level format, snapshot then diffs, deletes, bad rows counted, re-import."""

from __future__ import annotations

import collections
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from ib_stream import cli_support as support
from ib_stream.analytics.book import OrderBook
from ib_stream.cli_import import import_app
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import ValidationError
from ib_stream.importers import OrderflowOptions, import_orderflow
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store.schema import table_to_records
from tests.conftest import T0_NS

T = T0_NS // 1_000_000  # epoch ms of the recordings
BTC, ETH = 11, 12

BookRow = tuple[int, str | None, str | None, str | None, Any]  # id, instrument, bids, asks, timestamp
TradeRow = tuple[int, str | None, str, Any, Any, str | None, Any]


def write_recording(path: Path, book: list[BookRow], trades: list[TradeRow]) -> Path:
    """An order-flow recording as the recorder writes it (TEXT timestamps, REAL prices)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE book (id INTEGER PRIMARY KEY, instrument TEXT, bids TEXT, asks TEXT, timestamp TEXT)")
        db.execute(
            "CREATE TABLE trades (id INTEGER PRIMARY KEY, instrument TEXT, trade_id TEXT, price REAL, size REAL, "
            "side TEXT, timestamp TEXT)"
        )
        db.executemany("INSERT INTO book VALUES (?, ?, ?, ?, ?)", book)
        db.executemany("INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?, ?)", trades)
    db.close()
    return path


def stored(store: TickStore, contract_id: int, tick_type: TickType) -> list[dict[str, Any]]:
    return table_to_records(store.engine.read_stream(StreamKey(contract_id, tick_type), 0, 2**62))


def ns(ms: int) -> int:
    return ms * 1_000_000


# ---- the designed BTC recording: each row's expected operations written out by hand -------------------

BTC_BOOK: list[BookRow] = [
    (1, "BTC", "[[100.0, 5, 0, 3], [99.5, 2, 1, 1], [99.0, 7, 0, 2]]", "[[100.5, 1], [101.0, 4]]", str(T)),
    (
        2,
        "BTC",
        '[{"price": 100.0, "size": 6}, {"price": 99.0, "size": 7}, {"price": 98.5, "size": 3}]',
        '[{"p": 100.5, "s": 0}, {"p": 101.0, "s": 4}, {"p": 101.5, "s": 2}]',
        str(T + 100),
    ),
    (3, "BTC", "[[100.0, 6], [99.0", "[]", str(T + 200)),
    (4, "BTC", "[]", "[]", None),
    (5, "BTC", "[]", "[]", "yesterday"),
    (6, "BTC", "[[100.0, -1]]", "[]", str(T + 300)),
    (7, "BTC", "[]", "[[0, 1]]", str(T + 310)),
    (8, "BTC", "[[100.0]]", "[]", str(T + 320)),
    (9, "BTC", None, "[]", str(T + 330)),
    (10, "BTC", "[[100.0, 1], [100.0, 2]]", "[]", str(T + 340)),
    (11, "BTC", "[]", "[]", str(T // 1000)),  # seconds, not milliseconds
    (12, "BTC", '{"price": 1}', "[]", str(T + 350)),
    (13, "BTC", '[{"px": 1, "sz": 2}]', "[]", str(T + 360)),
    (14, "BTC", '[["abc", 1]]', "[]", str(T + 370)),
    (15, "BTC", "[[100.0, NaN]]", "[]", str(T + 380)),
    (16, None, "[]", "[]", str(T + 390)),
    (
        17,
        "BTC",
        "[(100.0, 6.0), (99.0, 8.0), (98.5, 3.0)]",
        "[{'p': 101.0, 's': 4.0}, {'p': 101.5, 's': 2.5}]",
        str(T + 400),
    ),
    (18, "BTC", '[["100.25", "1.5", "0", "2"], ["100.0", "6"]]', '[["101.0", "0"], ["101.5", "2.5"]]', f"{T + 500}.0"),
    (19, "BTC", "[]", "[]", str(T + 600)),
    (20, "BTC", "[[99.0, 1]]", "[[99.5, 1]]", T + 700),  # an INTEGER stored in the TEXT column
]

BTC_DEPTH = [
    # row 1: the first row of the instrument is a snapshot: every level inserted, bids high→low, asks low→high
    (ns(T), "bid", "insert", 100.0, 5.0),
    (ns(T), "bid", "insert", 99.5, 2.0),
    (ns(T), "bid", "insert", 99.0, 7.0),
    (ns(T), "ask", "insert", 100.5, 1.0),
    (ns(T), "ask", "insert", 101.0, 4.0),
    # row 2: 100.0 resized, 99.5 gone, 99.0 unchanged, 98.5 new; ask 100.5 sized 0, 101.0 unchanged, 101.5 new
    (ns(T + 100), "bid", "update", 100.0, 6.0),
    (ns(T + 100), "bid", "delete", 99.5, 0.0),
    (ns(T + 100), "bid", "insert", 98.5, 3.0),
    (ns(T + 100), "ask", "delete", 100.5, 0.0),
    (ns(T + 100), "ask", "insert", 101.5, 2.0),
    # rows 3-16 are bad and change nothing; row 17 (Python literal): 99.0 resized, ask 101.5 resized
    (ns(T + 400), "bid", "update", 99.0, 8.0),
    (ns(T + 400), "ask", "update", 101.5, 2.5),
    # row 18 (numeric strings): 100.25 new, 99.0 and 98.5 gone; ask 101.0 sized 0
    (ns(T + 500), "bid", "insert", 100.25, 1.5),
    (ns(T + 500), "bid", "delete", 99.0, 0.0),
    (ns(T + 500), "bid", "delete", 98.5, 0.0),
    (ns(T + 500), "ask", "delete", 101.0, 0.0),
    # row 19: an empty book deletes every level
    (ns(T + 600), "bid", "delete", 100.25, 0.0),
    (ns(T + 600), "bid", "delete", 100.0, 0.0),
    (ns(T + 600), "ask", "delete", 101.5, 0.0),
    # row 20: levels again
    (ns(T + 700), "bid", "insert", 99.0, 1.0),
    (ns(T + 700), "ask", "insert", 99.5, 1.0),
]

BTC_TRADES: list[TradeRow] = [
    (1, "BTC", "a1", 100.5, 0.5, "buy", str(T + 10)),
    (2, "BTC", "a2", 100.0, 2.0, "sell", str(T + 20)),
    (3, "BTC", "a3", 100.5, 1.0, " BUY ", str(T + 30)),
    (4, "BTC", "a4", 100.5, 3.0, None, str(T + 40)),
    (5, "BTC", "a5", 100.5, 1.0, "hold", str(T + 50)),
    (6, "BTC", "a6", 100.5, -1.0, "buy", str(T + 60)),
    (7, "BTC", "a7", 100.5, 0.0, "buy", str(T + 70)),
    (8, "BTC", "a8", "abc", 1.0, "buy", str(T + 80)),
    (9, "BTC", "a9", 100.5, 1.0, "buy", None),
    (10, None, "a10", 100.5, 1.0, "buy", str(T + 90)),
    (11, "BTC", "a11", None, 1.0, "sell", str(T + 95)),
    (12, "BTC", "a12", -5.0, 1.0, "sell", str(T + 96)),
    (13, "BTC", "a13", 99.75, 0.25, "sell", str(T + 35)),  # recorded late: stored in event-time order
]

BTC_LAST = [
    (ns(T + 10), 100.5, 0.5, 1),
    (ns(T + 20), 100.0, 2.0, -1),
    (ns(T + 30), 100.5, 1.0, 1),
    (ns(T + 35), 99.75, 0.25, -1),
    (ns(T + 40), 100.5, 3.0, None),
]

EXPECTED_SKIPPED = {
    "book: levels are neither JSON nor a Python literal": 1,
    "book: missing timestamp": 1,
    "book: timestamp is not epoch milliseconds": 1,
    "book: negative size": 1,
    "book: level price is not positive": 1,
    "book: level is not [price, size, ...] or {price, size}": 1,
    "book: missing levels": 1,
    "book: duplicate price level": 1,
    "book: timestamp out of range (not epoch milliseconds?)": 1,
    "book: levels are not a list": 1,
    "book: level has no price or size": 1,
    "book: level price is not a finite number": 1,
    "book: level size is not a finite number": 1,
    "book: missing instrument": 1,
    "trades: unknown side": 1,
    "trades: negative size": 1,
    "trades: zero size": 1,
    "trades: price is not a finite number": 1,
    "trades: missing timestamp": 1,
    "trades: missing instrument": 1,
    "trades: missing price": 1,
    "trades: price is not positive": 1,
}


@pytest.fixture
def btc_file(tmp_path: Path) -> Path:
    return write_recording(tmp_path / "btc.db", BTC_BOOK, BTC_TRADES)


def depth_view(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["ts"], r["side"], r["operation"], r["price"], r["size"]) for r in records]


def test_book_rows_become_a_snapshot_then_diffs(store: TickStore, btc_file: Path) -> None:
    report = import_orderflow(store, btc_file, OrderflowOptions(contract_id=BTC), batch_size=4)
    depth = stored(store, BTC, TickType.DEPTH)
    assert depth_view(depth) == BTC_DEPTH
    assert {(r["by_price"], r["position"], r["market_maker"], r["source"]) for r in depth} == {(True, 0, "", "import")}
    assert [r["seq"] for r in depth] == list(range(1, len(BTC_DEPTH) + 1))
    assert report.stored[StreamKey(BTC, TickType.DEPTH)] == len(BTC_DEPTH)


def test_trades_become_last_ticks_with_side(store: TickStore, btc_file: Path) -> None:
    report = import_orderflow(store, btc_file, OrderflowOptions(contract_id=BTC))
    trades = stored(store, BTC, TickType.LAST)
    assert [(r["ts"], r["price"], r["size"], r["side"]) for r in trades] == BTC_LAST
    assert {r["source"] for r in trades} == {"import"}
    assert report.stored[StreamKey(BTC, TickType.LAST)] == len(BTC_LAST)


def test_bad_rows_are_counted_by_reason_and_never_abort(store: TickStore, btc_file: Path) -> None:
    report = import_orderflow(store, btc_file, OrderflowOptions(contract_id=BTC))
    assert dict(report.skipped) == EXPECTED_SKIPPED
    assert report.rows_read == len(BTC_BOOK) + len(BTC_TRADES)
    assert report.examples["book: missing timestamp"] == "book id 4"
    assert report.examples["trades: unknown side"] == "trades id 5: 'hold'"


def test_reimport_stores_nothing_twice(store: TickStore, btc_file: Path) -> None:
    first = import_orderflow(store, btc_file, OrderflowOptions(contract_id=BTC), batch_size=3)
    before = {t: stored(store, BTC, t) for t in (TickType.DEPTH, TickType.LAST)}
    again = import_orderflow(store, btc_file, OrderflowOptions(contract_id=BTC), batch_size=7)
    assert again.ticks_stored == 0
    assert again.duplicates == first.stored
    assert dict(again.skipped) == EXPECTED_SKIPPED
    assert {t: stored(store, BTC, t) for t in (TickType.DEPTH, TickType.LAST)} == before


def test_a_copy_of_the_file_elsewhere_is_the_same_recording(store: TickStore, btc_file: Path, tmp_path: Path) -> None:
    import_orderflow(store, btc_file, OrderflowOptions(contract_id=BTC))
    copy = tmp_path / "copy" / "renamed.db"
    copy.parent.mkdir()
    with sqlite3.connect(btc_file) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    source.close()
    target.close()
    assert import_orderflow(store, copy, OrderflowOptions(contract_id=BTC)).ticks_stored == 0


# ---- a random recording: the stored depth, replayed, gives back every recorded book ---------------------


def random_books(rng: random.Random, rows: int) -> list[tuple[dict[float, float], dict[float, float]]]:
    books = []
    for _ in range(rows):
        mid = 2000 + rng.randint(-20, 20) * 0.5
        bids = {mid - 0.5 * k: float(rng.choice([0, 1, 2, 5, 10])) for k in range(1, rng.randint(1, 8))}
        asks = {mid + 0.5 * k: float(rng.choice([0, 1, 3, 7])) for k in range(1, rng.randint(1, 8))}
        books.append((bids, asks))
    return books


def as_text(levels: dict[float, float], style: int) -> str:
    items = list(levels.items())
    if style == 0:
        return json.dumps([[p, s, 0, 1] for p, s in items])
    if style == 1:
        return json.dumps([[p, s] for p, s in items])
    if style == 2:
        return json.dumps([{"price": p, "size": s} for p, s in items])
    if style == 3:
        return json.dumps([{"p": str(p), "s": str(s)} for p, s in items])
    return repr([(p, s) for p, s in items])


def replay_by_price(ticks: list[dict[str, Any]]) -> dict[int, tuple[dict[float, float], dict[float, float]]]:
    """The book after each timestamp, applying price-level depth as documented (delete or size 0 removes)."""
    book: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}
    after: dict[int, tuple[dict[float, float], dict[float, float]]] = {}
    for tick in ticks:
        side = book[tick["side"]]
        if tick["operation"] == "delete" or tick["size"] == 0:
            assert tick["price"] in side, "a delete of a level the book does not hold"
            del side[tick["price"]]
        else:
            assert (tick["price"] in side) == (tick["operation"] == "update")
            side[tick["price"]] = tick["size"]
        after[tick["ts"]] = (dict(book["bid"]), dict(book["ask"]))
    return after


def test_replaying_the_stored_depth_gives_every_recorded_book(store: TickStore, tmp_path: Path) -> None:
    rng = random.Random(7)
    books = random_books(rng, 300)
    rows: list[BookRow] = [
        (i + 1, "ETH", as_text(bids, rng.randrange(5)), as_text(asks, rng.randrange(5)), str(T + 10 * i))
        for i, (bids, asks) in enumerate(books)
    ]
    ids = list(range(1, len(rows) + 1))
    rng.shuffle(ids)  # recorded out of order: ids say nothing, timestamps decide
    rows = [(new_id, *row[1:]) for new_id, row in zip(ids, rows, strict=True)]
    path = write_recording(tmp_path / "eth.db", rows, [])
    import_orderflow(store, path, OrderflowOptions(contract_id=ETH), batch_size=50)
    depth = stored(store, ETH, TickType.DEPTH)
    after = replay_by_price(depth)
    book: tuple[dict[float, float], dict[float, float]] = ({}, {})
    for i, (bids, asks) in enumerate(books):
        expected = ({p: s for p, s in bids.items() if s}, {p: s for p, s in asks.items() if s})
        book = after.get(ns(T + 10 * i), book)  # a row equal to the previous one gives no tick
        assert book == expected, f"book after row {i}"
    # The store's own book (the one queries and bars use) agrees, without anomalies.
    order_book = OrderBook()
    order_book.apply_records(depth)
    assert order_book.anomalies == 0
    assert order_book.levels() == (sorted(book[0].items(), reverse=True), sorted(book[1].items()))


def test_a_recording_that_grew_adds_only_its_new_ticks(store: TickStore, tmp_path: Path) -> None:
    rng = random.Random(9)
    books = random_books(rng, 120)
    rows: list[BookRow] = [
        (i + 1, "ETH", as_text(b, 1), as_text(a, 0), str(T + 10 * i)) for i, (b, a) in enumerate(books)
    ]
    trades: list[TradeRow] = [
        (i + 1, "ETH", str(i), 2000.0 + i % 4, 1.0, "buy", str(T + 10 * i + 5)) for i in range(120)
    ]
    path = write_recording(tmp_path / "eth.db", rows[:70], trades[:70])
    first = import_orderflow(store, path, OrderflowOptions(contract_id=ETH), batch_size=16)
    with sqlite3.connect(path) as db:  # the recorder went on writing
        db.executemany("INSERT INTO book VALUES (?, ?, ?, ?, ?)", rows[70:])
        db.executemany("INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?, ?)", trades[70:])
    db.close()
    grown = import_orderflow(store, path, OrderflowOptions(contract_id=ETH), batch_size=16)
    last = StreamKey(ETH, TickType.LAST)
    assert grown.stored[last] == 50 and grown.duplicates[last] == 70 and grown.grown[last] == 70
    assert grown.duplicates[StreamKey(ETH, TickType.DEPTH)] == first.stored[StreamKey(ETH, TickType.DEPTH)]
    assert len(stored(store, ETH, TickType.LAST)) == 120
    after = replay_by_price(stored(store, ETH, TickType.DEPTH))
    book: tuple[dict[float, float], dict[float, float]] = ({}, {})
    for i, (bids, asks) in enumerate(books):
        book = after.get(ns(T + 10 * i), book)
        assert book == ({p: s for p, s in bids.items() if s}, {p: s for p, s in asks.items() if s}), i


def test_delta_rows_change_only_the_levels_they_list(store: TickStore, tmp_path: Path) -> None:
    rows: list[BookRow] = [
        (1, "ETH", "[[10.0, 1], [9.0, 2]]", "[[11.0, 1]]", str(T)),
        (2, "ETH", "[[10.0, 3], [8.0, 1]]", "[[11.0, 0], [12.0, 5]]", str(T + 1)),
        (3, "ETH", "[[7.0, 0]]", "[]", str(T + 2)),  # delete of a level never held: nothing
        (4, "ETH", "[[9.0, 0], [10.0, 3]]", "[[12.0, 5]]", str(T + 3)),  # same sizes: nothing
    ]
    path = write_recording(tmp_path / "delta.db", rows, [])
    import_orderflow(store, path, OrderflowOptions(contract_id=ETH, book_rows="delta"))
    assert depth_view(stored(store, ETH, TickType.DEPTH)) == [
        (ns(T), "bid", "insert", 10.0, 1.0),
        (ns(T), "bid", "insert", 9.0, 2.0),
        (ns(T), "ask", "insert", 11.0, 1.0),
        (ns(T + 1), "bid", "update", 10.0, 3.0),
        (ns(T + 1), "bid", "insert", 8.0, 1.0),
        (ns(T + 1), "ask", "delete", 11.0, 0.0),
        (ns(T + 1), "ask", "insert", 12.0, 5.0),
        (ns(T + 3), "bid", "delete", 9.0, 0.0),
    ]


# ---- instruments and contracts --------------------------------------------------------------------------


@pytest.fixture
def two_instruments(tmp_path: Path) -> Path:
    book: list[BookRow] = [
        (1, "BTC", "[[100, 1]]", "[[101, 1]]", str(T)),
        (2, "ETH", "[[10, 1]]", "[[11, 1]]", str(T + 1)),
    ]
    trades: list[TradeRow] = [(1, "BTC", "x", 100.5, 1.0, "buy", str(T)), (2, "ETH", "y", 10.5, 2.0, "sell", str(T))]
    return write_recording(tmp_path / "two.db", book, trades)


def test_each_instrument_goes_to_its_contract(store: TickStore, two_instruments: Path) -> None:
    report = import_orderflow(store, two_instruments, OrderflowOptions(contract_ids={"BTC": BTC, "ETH": ETH}))
    assert [r["price"] for r in stored(store, BTC, TickType.DEPTH)] == [100.0, 101.0]
    assert [r["price"] for r in stored(store, ETH, TickType.DEPTH)] == [10.0, 11.0]
    assert [(r["price"], r["side"]) for r in stored(store, ETH, TickType.LAST)] == [(10.5, -1)]
    assert report.rows_read == 4


def test_one_instrument_can_be_chosen(store: TickStore, two_instruments: Path) -> None:
    report = import_orderflow(store, two_instruments, OrderflowOptions(contract_id=ETH, instruments=("ETH",)))
    assert report.rows_read == 2
    assert [r["price"] for r in stored(store, ETH, TickType.LAST)] == [10.5]
    assert stored(store, BTC, TickType.LAST) == []


@pytest.mark.parametrize(
    ("options", "field", "fragment"),
    [
        (OrderflowOptions(contract_id=BTC), "--map", "BTC, ETH need a contract id"),
        (OrderflowOptions(), "--map", "need a contract id"),
        (OrderflowOptions(contract_ids={"BTC": 1, "SOL": 2}), "--map", "SOL is not an instrument"),
        (OrderflowOptions(contract_id=1, instruments=("XRP",)), "--instrument", "instruments: BTC, ETH"),
        (OrderflowOptions(contract_ids={"BTC": 1, "ETH": 1}), "--map", "all map to contract 1"),
    ],
)
def test_instruments_without_a_contract_are_refused_before_storing(
    store: TickStore, two_instruments: Path, options: OrderflowOptions, field: str, fragment: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        import_orderflow(store, two_instruments, options)
    assert raised.value.field == field
    assert fragment in raised.value.message
    assert store.buffer.streams() == []


def test_a_file_that_is_not_a_recording_is_refused(store: TickStore, tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("not sqlite at all, just some text that is long enough to be a header" * 3)
    with pytest.raises(ValidationError, match="is not a SQLite database"):
        import_orderflow(store, text, OrderflowOptions(contract_id=1))
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE quotes (x)")
    db.close()
    with pytest.raises(ValidationError, match="no table book or trades"):
        import_orderflow(store, other, OrderflowOptions(contract_id=1))
    with pytest.raises(ValidationError, match="does not exist"):
        import_orderflow(store, tmp_path / "missing.db", OrderflowOptions(contract_id=1))


# ---- command line ---------------------------------------------------------------------------------------


def cli_app() -> typer.Typer:
    """The root command group as `ib-stream` builds it, with the import sub-app added."""
    app = typer.Typer(cls=support.RootGroup)

    @app.callback()
    def _options(ctx: typer.Context, data_dir: Path = typer.Option(None, "--data-dir")) -> None:
        ctx.obj = support.GlobalOptions(None, data_dir)

    app.add_typer(import_app, name="import")
    return app


def run(config: StorageConfig, *args: str) -> Result:
    config.data_root.mkdir(parents=True, exist_ok=True)
    return CliRunner().invoke(cli_app(), ["--data-dir", str(config.data_root), *args], env={"COLUMNS": "300"})


def test_cli_imports_a_recording_and_reports(config: StorageConfig, two_instruments: Path) -> None:
    args = ["import", "orderflow", str(two_instruments), "--map", "BTC=11", "--map", "ETH=12"]
    result = run(config, *args)
    assert result.exit_code == 0, result.output
    assert "4 rows read, 6 ticks stored, 0 already stored, 0 rows skipped" in result.stdout
    assert "11 depth" in result.stdout and "12 last" in result.stdout
    again = run(config, *args)
    assert "0 ticks stored, 6 already stored" in again.stdout
    with TickStore(config) as store:
        assert len(stored(store, BTC, TickType.DEPTH)) == 2


def test_cli_reports_skipped_rows_by_reason(config: StorageConfig, btc_file: Path) -> None:
    result = run(config, "import", "orderflow", str(btc_file), "--contract", "11", "--batch-size", "5")
    assert result.exit_code == 0, result.output
    for reason in EXPECTED_SKIPPED:
        assert reason in result.stdout
    assert f"{sum(EXPECTED_SKIPPED.values())} rows skipped" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--contract", "11"], "error: --map BTC, ETH need a contract id"),
        (["--map", "BTC"], "error: --map BTC is not INSTRUMENT=CONTRACT_ID"),
        (["--map", "BTC=x"], "error: --map x is not a contract id (an integer, e.g. 265598)"),
        (["--map", "BTC=1,ETH=2", "--book-rows", "some"], "error: --book-rows some is not one of full, delta"),
    ],
)
def test_cli_bad_options_exit_2(config: StorageConfig, two_instruments: Path, args: list[str], fragment: str) -> None:
    result = run(config, "import", "orderflow", str(two_instruments), *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(fragment)
    assert "Traceback" not in result.output


def test_skipped_counts_match_a_plain_count_of_bad_rows(store: TickStore, btc_file: Path) -> None:
    # Independent of the reasons: every row is either used or skipped, never both and never lost.
    report = import_orderflow(store, btc_file, OrderflowOptions(contract_id=BTC))
    good_book_rows = {1, 2, 17, 18, 19, 20}
    good_trade_rows = {1, 2, 3, 4, 13}
    assert report.rows_skipped == (len(BTC_BOOK) - len(good_book_rows)) + (len(BTC_TRADES) - len(good_trade_rows))
    assert collections.Counter(r["ts"] for r in stored(store, BTC, TickType.LAST)) == collections.Counter(
        ns(int(BTC_TRADES[i - 1][6])) for i in good_trade_rows
    )


def test_cli_refuses_while_the_service_holds_the_data_root(
    store: TickStore, config: StorageConfig, two_instruments: Path
) -> None:
    result = run(config, "import", "orderflow", str(two_instruments), "--map", "BTC=11,ETH=12")
    assert result.exit_code == 2, result.output
    assert "is in use by" in result.stderr
    assert store.buffer.streams() == []
