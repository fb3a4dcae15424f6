"""`import list` and `import undo`: undoing an import leaves the store as if it had never been made.

The oracle is a second store that ran the same history without the imports (`tests/support/undo_scenario.py`):
every answer — ticks, bars from rollups and from ticks, books, daily statistics — of the store that undid them
must equal the oracle's, before and after the rollup and snapshot jobs run again, after reopening and after
`index rebuild`; `verify` finds nothing.
"""

from __future__ import annotations

import collections
import csv
from pathlib import Path
from typing import Any

import pytest

from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import ValidationError
from ib_stream.importers import ImportLedger, import_file, preset
from ib_stream.importers.undo import list_imports, undo_import
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store.repair import rebuild, verify
from ib_stream.store.schema import table_to_records
from tests.conftest import T0, T0_NS
from tests.support import undo_scenario as scenario
from tests.unit.test_importers_orderflow import run as run_cli

C = 31
LAST = StreamKey(C, TickType.LAST)


config_at = scenario.config_at


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a store that never made the X imports answers (built once for the module)."""
    return scenario.oracle(tmp_path_factory.mktemp("oracle"))


def built(tmp_path: Path) -> tuple[StorageConfig, ManualClock]:
    clock = ManualClock(T0)
    config = config_at(tmp_path / "storage")
    scenario.build(config, clock, undone=False, directory=tmp_path / "files")
    return config, clock


def test_undoing_compacted_and_rolled_up_imports_gives_the_store_that_never_made_them(
    tmp_path: Path, oracle: dict[str, Any]
) -> None:
    config, clock = built(tmp_path)
    with TickStore(config, clock) as store:
        before = scenario.observe(store)
        assert before["ticks depth"] != oracle["ticks depth"]  # the imports are there, in every stream
        assert len(before["ticks last"]) > len(oracle["ticks last"])
        assert len(before["ticks bid_ask"]) > len(oracle["ticks bid_ask"])
        assert any(f.kind == "compacted" for f in store.index.files())
        assert list(store.layout.rollup_files(StreamKey(scenario.C, TickType.DEPTH)))
        assert list(store.layout.snapshot_dates(scenario.C))
        top = {s: store.buffer.next_seq(s) for s in scenario.STREAMS}
        for import_id in reversed(scenario.X_IDS):
            report = undo_import(store, import_id)
            assert report.removal is not None and report.removal.ticks_removed == report.info.stored
            assert report.info.state == "undone" and not report.warnings
        scenario.assert_same(scenario.observe(store), oracle, "after undo")
        store.run_rollups()
        store.run_snapshots()
        scenario.assert_same(scenario.observe(store), oracle, "after the jobs ran again")
        assert {s: store.buffer.next_seq(s) for s in scenario.STREAMS} == top  # no seq is given twice
    assert verify(config).ok
    with TickStore(config, clock) as store:
        scenario.assert_same(scenario.observe(store), oracle, "reopened")
        assert all(store.buffer.next_seq(s) >= top[s] for s in scenario.STREAMS)
    rebuild(config)
    with TickStore(config, clock) as store:
        scenario.assert_same(scenario.observe(store), oracle, "after index rebuild")
    assert verify(config).ok


def test_undo_is_listed_and_a_second_undo_does_nothing(tmp_path: Path) -> None:
    config, clock = built(tmp_path)
    imports = list_imports(config.index_file)
    assert [(i.import_id, i.state, Path(i.file_path).name) for i in imports] == [
        (1, "imported", "flow.db"),
        (2, "imported", "mbp.csv"),
        (3, "imported", "y.csv"),
    ]
    mbp = imports[1]
    assert mbp.how == "--preset databento-mbp1"
    assert [(s.stream.tick_type, s.stored, s.matched) for s in mbp.streams] == [
        (TickType.BID_ASK, 903, 0),
        (TickType.LAST, 300, 3),  # three of its trades were recorded ones
    ]
    with TickStore(config, clock) as store:
        assert undo_import(store, 2).removal is not None
        again = undo_import(store, 2)
        assert again.already_undone and again.info.state == "undone"
        with pytest.raises(ValidationError, match="ID 9 is not an import"):
            undo_import(store, 9)
    assert [i.state for i in list_imports(config.index_file)] == ["imported", "undone", "imported"]


def trades_file(path: Path, rows: list[tuple[int, float, float]]) -> Path:
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["timestamp_ms_utc", "trade_id", "price", "quantity", "buyer_maker"])
        for i, (ms, price, qty) in enumerate(rows):
            out.writerow([ms, i, price, qty, i % 2 == 0])
    return path


def last_ticks(store: TickStore) -> collections.Counter[tuple[Any, ...]]:
    records = table_to_records(store.engine.read_stream(LAST, 0, 2**62))
    return collections.Counter((r["ts"], r["price"], r["size"], r["source"]) for r in records)


def test_undo_of_ticks_still_in_the_buffer(store: TickStore, config: StorageConfig, tmp_path: Path) -> None:
    # Nothing archived yet: the import's ticks are the last of the stream, in the open segment and the hot tier.
    ms = T0_NS // 1_000_000 - 3_600_000
    recorded = [{"ts": (ms + 500 * i) * 1_000_000, "price": 50.0, "size": 1.0} for i in range(30)]
    store.append_batch_sync(C, "last", recorded, "sim")
    path = trades_file(tmp_path / "t.csv", [(ms + 250 + 500 * i, 51.0 + i % 3, 2.0) for i in range(40)])
    report = import_file(store, path, preset("binance-trades"), C, batch_size=7)
    assert report.stored[LAST] == 40 and report.import_id == 1
    assert sum(last_ticks(store).values()) == 70
    top = store.buffer.next_seq(LAST)
    result = undo_import(store, 1)
    assert result.removal is not None and result.removal.removed[LAST] == 40
    want = collections.Counter((t["ts"], t["price"], t["size"], "sim") for t in recorded)
    assert last_ticks(store) == want
    assert store.buffer.next_seq(LAST) == top  # the removed ticks' seqs are not given again
    store.append_batch_sync(C, "last", recorded[:6], "sim")  # recorded after the undo
    want += collections.Counter((t["ts"], t["price"], t["size"], "sim") for t in recorded[:6])
    assert last_ticks(store) == want
    store.close()
    assert verify(config).ok
    # `index rebuild` sets the archived watermark from the files, below the removed ticks' seqs: were they still
    # in the buffer segments, the store would take them for unarchived ticks and serve them again.
    rebuild(config)
    with TickStore(config, ManualClock(T0)) as reopened:
        assert last_ticks(reopened) == want
        assert reopened.buffer.next_seq(LAST) == top + 6
        again = import_file(reopened, path, preset("binance-trades"), C)
        assert again.stored[LAST] == 40  # its ledger entries went with it: importing it again stores it again
    store.open()  # for the fixture's close


@pytest.mark.parametrize("appended", [True, False])
def test_an_interrupted_import_can_be_undone(
    store: TickStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, appended: bool
) -> None:
    # The run dies at its third batch, after the append was durable and before the ledger knew (its ticks are the
    # import's too), or before the append (then the seqs it was about to get go to the next import's ticks).
    ms = T0_NS // 1_000_000 - 3_600_000
    path = trades_file(tmp_path / "t.csv", [(ms + i, 60.0 + i % 4, 1.0 + i % 2) for i in range(50)])
    store.append_batch_sync(C, "last", [{"ts": (ms + 1) * 1_000_000, "price": 61.0, "size": 2.0}], "sim")
    commit, append = ImportLedger.commit, store.append_batch_sync
    calls: list[Any] = []

    def crash_on_third_commit(self: ImportLedger, *args: Any) -> None:
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("killed after the append")
        commit(self, *args)

    def crash_on_third_append(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("killed before the append")
        return append(*args, **kwargs)

    if appended:
        monkeypatch.setattr(ImportLedger, "commit", crash_on_third_commit)
    else:
        monkeypatch.setattr(store, "append_batch_sync", crash_on_third_append)
    with pytest.raises(RuntimeError):
        import_file(store, path, preset("binance-trades"), C, batch_size=10)
    monkeypatch.undo()
    assert sum(last_ticks(store).values()) == (31 if appended else 21)
    other = import_file(store, trades_file(tmp_path / "o.csv", [(ms + 900 + i, 70.0, 3.0) for i in range(5)]),
                        preset("binance-trades"), C)  # fmt: skip
    assert [(i.import_id, i.state, i.stored) for i in list_imports(store.config.index_file)] == [
        (1, "imported", 20),  # unfinished (`import list` says interrupted); the third batch is not counted
        (2, "imported", 5),
    ]
    assert other.import_id == 2
    result = undo_import(store, 1)
    assert result.removal is not None and result.removal.removed[LAST] == (30 if appended else 20)
    assert last_ticks(store) == collections.Counter(
        [((ms + 1) * 1_000_000, 61.0, 2.0, "sim")]
        + [((ms + 900 + i) * 1_000_000, 70.0, 3.0, "import") for i in range(5)]
    )


def test_undo_names_later_imports_that_found_its_ticks(store: TickStore, tmp_path: Path) -> None:
    ms = T0_NS // 1_000_000 - 3_600_000
    rows = [(ms + i, 60.0, 1.0) for i in range(20)]
    import_file(store, trades_file(tmp_path / "a.csv", rows), preset("binance-trades"), C)
    recut = import_file(store, trades_file(tmp_path / "b.csv", rows[10:]), preset("binance-trades"), C)
    assert recut.stored[LAST] == 0 and recut.matched[LAST] == 10
    report = undo_import(store, 1)
    assert len(report.warnings) == 1 and "later imports (2)" in report.warnings[0]
    assert sum(last_ticks(store).values()) == 0


# ---- command line ---------------------------------------------------------------------------------------------------
def test_cli_list_and_undo(config: StorageConfig, tmp_path: Path) -> None:
    ms = T0_NS // 1_000_000 - 3_600_000
    path = trades_file(tmp_path / "trades.csv", [(ms + 10 * i, 60.0 + i % 3, 1.0) for i in range(25)])
    assert run_cli(config, "import", "list").output.strip() == "no imports"
    imported = run_cli(config, "import", "file", str(path), "--preset", "binance-trades", "--contract", str(C))
    assert imported.exit_code == 0 and imported.output.startswith("import 1: imported ")
    listed = run_cli(config, "import", "list")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if line.strip().startswith("1 "))
    for shown in ("imported", str(path), "--preset binance-trades", f"{C} last", "25", "2025-01-10T13:00:00Z"):
        assert shown in row, (shown, row)
    undone = run_cli(config, "import", "undo", "1")
    assert undone.exit_code == 0, undone.output
    assert "undid import 1" in undone.output and "25 ticks removed" in undone.output
    assert "undone" in run_cli(config, "import", "list").output
    again = run_cli(config, "import", "undo", "1")
    assert again.exit_code == 0 and "already undone" in again.output
    missing = run_cli(config, "import", "undo", "7")
    assert missing.exit_code == 2 and "ID 7 is not an import" in missing.output
    with TickStore(config):  # the service holds the data root
        locked = run_cli(config, "import", "undo", "1")
    assert locked.exit_code == 2 and "in use" in locked.output
