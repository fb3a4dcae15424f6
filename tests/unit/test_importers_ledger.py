"""The import ledger: a re-import stores nothing twice, also after a crash between an append and its ledger entry."""

from __future__ import annotations

import collections
import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ib_stream.domain import StreamKey, TickType
from ib_stream.importers import ImportLedger, import_file, preset
from ib_stream.importers.ledger import BatchKey
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store.repair import rebuild
from ib_stream.store.schema import table_to_records
from tests.conftest import T0_NS

CONTRACT = 7
STREAM = StreamKey(CONTRACT, TickType.LAST)
ROWS = 57
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def trades_csv(tmp_path: Path) -> Path:
    """Binance-layout trades; rows 20-22 are identical (a real recording can repeat a trade exactly)."""
    path = tmp_path / "trades.csv"
    ms = T0_NS // 1_000_000
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["timestamp_ms_utc", "trade_id", "price", "quantity", "buyer_maker"])
        for i in range(ROWS):
            j = 20 if 20 <= i <= 22 else i  # the same trade three times (only the trade id differs)
            out.writerow([ms + j, i, 100 + (j % 5) * 0.25, 1 + j % 3, j % 2 == 0])
    return path


def expected(path: Path) -> collections.Counter[tuple[Any, ...]]:
    with open(path, newline="") as handle:
        return collections.Counter(
            (
                int(r["timestamp_ms_utc"]) * 1_000_000,
                float(r["price"]),
                float(r["quantity"]),
                -1 if r["buyer_maker"] == "True" else 1,
            )
            for r in csv.DictReader(handle)
        )


def stored(store: TickStore) -> collections.Counter[tuple[Any, ...]]:
    records = table_to_records(store.engine.read_stream(STREAM, 0, 2**62))
    return collections.Counter((r["ts"], r["price"], r["size"], r["side"]) for r in records)


def run_import(store: TickStore, path: Path, batch_size: int = 10) -> Any:
    return import_file(store, path, preset("binance-trades"), CONTRACT, batch_size=batch_size)


class Crash(Exception):
    pass


def test_reimport_stores_nothing_twice(store: TickStore, trades_csv: Path) -> None:
    first = run_import(store, trades_csv)
    assert first.stored[STREAM] == ROWS and first.batches == 6
    again = run_import(store, trades_csv, batch_size=7)
    assert again.ticks_stored == 0 and again.duplicates[STREAM] == ROWS and again.batches == 0
    assert stored(store) == expected(trades_csv)
    assert store.buffer.next_seq(STREAM) == ROWS + 1


def test_crash_after_the_append_before_the_ledger_commit(
    store: TickStore, trades_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ImportLedger.commit
    calls = []

    def crash_on_third(self: ImportLedger, *args: Any) -> None:
        calls.append(args)
        if len(calls) == 3:
            raise Crash("power cut after the append was durable")
        original(self, *args)

    monkeypatch.setattr(ImportLedger, "commit", crash_on_third)
    with pytest.raises(Crash):
        run_import(store, trades_csv)
    assert sum(stored(store).values()) == 30  # three batches durable, the third not in the ledger
    monkeypatch.setattr(ImportLedger, "commit", original)
    again = run_import(store, trades_csv)
    assert again.duplicates[STREAM] == 30 and again.stored[STREAM] == ROWS - 30
    assert stored(store) == expected(trades_csv)


def test_crash_before_the_append(store: TickStore, trades_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = store.append_batch_sync
    calls = []

    def crash_on_third(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 3:
            raise Crash("died before appending")
        return original(*args, **kwargs)

    monkeypatch.setattr(store, "append_batch_sync", crash_on_third)
    with pytest.raises(Crash):
        run_import(store, trades_csv)
    monkeypatch.setattr(store, "append_batch_sync", original)
    again = run_import(store, trades_csv)
    assert again.duplicates[STREAM] == 20 and again.stored[STREAM] == ROWS - 20
    assert stored(store) == expected(trades_csv)


@pytest.mark.parametrize("batch_after", [10, 4, 25])
def test_crash_in_the_middle_of_an_append_then_another_batch_size(
    store: TickStore, trades_csv: Path, monkeypatch: pytest.MonkeyPatch, batch_after: int
) -> None:
    # The third batch (ticks 20-29, holding the three identical trades) is half written when the process dies.
    original = store.append_batch_sync
    calls = []

    def torn_third(contract_id: int, tick_type: Any, ticks: list[Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(len(ticks))
        if len(calls) == 3:
            original(contract_id, tick_type, ticks[:2], *args, **kwargs)
            raise Crash("died after two ticks of the batch were written")
        return original(contract_id, tick_type, ticks, *args, **kwargs)

    monkeypatch.setattr(store, "append_batch_sync", torn_third)
    with pytest.raises(Crash):
        run_import(store, trades_csv)
    monkeypatch.setattr(store, "append_batch_sync", original)
    assert sum(stored(store).values()) == 22
    again = run_import(store, trades_csv, batch_size=batch_after)
    assert again.duplicates[STREAM] == 22 and again.stored[STREAM] == ROWS - 22
    assert stored(store) == expected(trades_csv)
    assert run_import(store, trades_csv).ticks_stored == 0


def test_a_killed_process_between_append_and_ledger_commit(config: StorageConfig, trades_csv: Path) -> None:
    # A real crash: the child process exits on the spot once its second batch is durable.
    child = f"""
import os, sys
from pathlib import Path
from ib_stream.importers import ImportLedger, import_file, preset
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
original, calls = ImportLedger.commit, []
def commit(self, *args):
    calls.append(args)
    if len(calls) == 2:
        os._exit(3)
    original(self, *args)
ImportLedger.commit = commit
store = TickStore(StorageConfig(data_root=Path(sys.argv[1]), fsync_interval_ms=1)).open()
import_file(store, Path(sys.argv[2]), preset("binance-trades"), {CONTRACT}, batch_size=10)
"""
    done = subprocess.run(
        [sys.executable, "-c", child, str(config.data_root), str(trades_csv)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr.decode()
    with TickStore(config) as store:
        assert sum(stored(store).values()) == 20
        recipe = preset("binance-trades")
        key = BatchKey(hashlib.sha256(trades_csv.read_bytes()).hexdigest(), STREAM, recipe.digest(recipe.outputs[0]))
        ledger = ImportLedger(config.index_file)
        assert [(b.first_tick, b.end_tick, b.state) for b in ledger.batches(key)] == [
            (0, 10, "done"),
            (10, 20, "pending"),
        ]
        ledger.close()
        again = run_import(store, trades_csv)
        assert again.duplicates[STREAM] == 20
        assert stored(store) == expected(trades_csv)


def test_the_ledger_survives_an_index_rebuild(config: StorageConfig, trades_csv: Path) -> None:
    with TickStore(config) as store:
        run_import(store, trades_csv)
    rebuild(config)
    with TickStore(config) as store:
        assert run_import(store, trades_csv).ticks_stored == 0
        assert stored(store) == expected(trades_csv)


def test_the_same_file_read_another_way_is_matched_by_content_with_a_warning(
    store: TickStore, trades_csv: Path
) -> None:
    # Reading the file without the side gives the same trades (time, price, size): they are not stored again
    # (the issue "every tick once": before content keys they were, doubling the volume).
    run_import(store, trades_csv)
    recipe = preset("binance-trades")
    output = recipe.outputs[0]
    without_side = type(output)(output.tick_type, {k: v for k, v in output.columns.items() if k != "buyer_maker"}, "ms")
    other = type(recipe)("custom", "no side", (without_side,), "csv")
    report = import_file(store, trades_csv, other, CONTRACT)
    assert report.stored[STREAM] == 0 and report.duplicates[STREAM] == ROWS == report.matched[STREAM]
    assert stored(store) == expected(trades_csv)
    assert len(report.warnings) == 1 and "already imported into 7/last with other options" in report.warnings[0]


def grow(path: Path, rows: int, start: int) -> None:
    """Append `rows` trades to a Binance-layout file (a recorder still writing to it)."""
    ms = T0_NS // 1_000_000
    with open(path, "a", newline="") as handle:
        out = csv.writer(handle)
        for i in range(start, start + rows):
            out.writerow([ms + 1000 + i, i, 101 + (i % 7) * 0.25, 2 + i % 3, i % 3 == 0])


def test_a_file_that_grew_stores_only_its_new_ticks(store: TickStore, trades_csv: Path) -> None:
    assert run_import(store, trades_csv).stored[STREAM] == ROWS  # batches end at 10, 20, ..., 57
    grow(trades_csv, 30, ROWS)
    grown = run_import(store, trades_csv, batch_size=8)
    assert grown.stored[STREAM] == 30 and grown.duplicates[STREAM] == ROWS and grown.grown == {STREAM: ROWS}
    assert stored(store) == expected(trades_csv)
    grow(trades_csv, 12, ROWS + 30)  # and again: the second import's batches are matched too
    again = run_import(store, trades_csv, batch_size=5)
    assert again.stored[STREAM] == 12 and again.grown == {STREAM: ROWS + 30}
    assert stored(store) == expected(trades_csv)
    assert run_import(store, trades_csv).ticks_stored == 0
    assert store.buffer.next_seq(STREAM) == ROWS + 42 + 1


def test_a_changed_file_stores_only_its_changed_ticks(store: TickStore, trades_csv: Path) -> None:
    run_import(store, trades_csv)
    original = expected(trades_csv)
    lines = trades_csv.read_text().splitlines()
    fields = lines[1 + 35].split(",")
    fields[2] = "999.0"  # trade 35 edited: the earlier batches end at 10, 20, 30 (same), 40 (differs)
    lines[1 + 35] = ",".join(fields)
    trades_csv.write_text("\n".join(lines) + "\n")
    changed = run_import(store, trades_csv)
    # The ledger matches the first 30 ticks; from there the store is asked by content: only the edited trade is new
    # (before content keys the 26 unchanged ticks after tick 30 were stored a second time).
    assert changed.grown == {STREAM: 30}
    assert changed.duplicates[STREAM] == ROWS - 1 and changed.matched[STREAM] == ROWS - 31
    assert changed.stored[STREAM] == 1
    assert stored(store) == original | expected(trades_csv)  # each trade of either content, as often as in either


def test_a_grown_file_import_interrupted_then_rerun(
    store: TickStore, trades_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_import(store, trades_csv)
    grow(trades_csv, 40, ROWS)
    original = ImportLedger.commit
    calls = []

    def crash_on_second(self: ImportLedger, *args: Any) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise Crash("power cut after the second batch of new ticks was durable")
        original(self, *args)

    monkeypatch.setattr(ImportLedger, "commit", crash_on_second)
    with pytest.raises(Crash):
        run_import(store, trades_csv)
    monkeypatch.setattr(ImportLedger, "commit", original)
    assert sum(stored(store).values()) == ROWS + 20
    again = run_import(store, trades_csv, batch_size=6)
    assert again.stored[STREAM] == 20 and again.duplicates[STREAM] == ROWS + 20
    assert stored(store) == expected(trades_csv)


def test_a_ledger_from_before_grown_files_gets_the_digest_column(tmp_path: Path) -> None:
    import sqlite3

    from ib_stream.importers.ledger import _SCHEMA

    path = tmp_path / "index.db"
    old_schema = "\n".join(line for line in _SCHEMA.splitlines() if "prefix_sha256" not in line)
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
    ledger = ImportLedger(path)
    key = BatchKey("abc", STREAM, "r")
    ledger.begin(key, (0, 3), 1, 3, (1, 2), "f.csv", "d1")
    ledger.commit(key, 0, (1, 3))
    assert ledger.earlier_ends(BatchKey("other", STREAM, "r"), "f.csv") == {3: {"d1"}}
    assert ledger.earlier_ends(BatchKey("abc", STREAM, "r"), "f.csv") == {}  # not its own content
    ledger.close()
