"""`StorageQuery`'s shape: one blocking implementation per operation with one awaitable form that runs it off
the event loop, and contracts that are passed in (or read once, at construction, from the settings it opened)
— never from the current directory later."""

from __future__ import annotations

import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from ib_stream.domain import Contract
from ib_stream.storage import StorageQuery, TickStore
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade

REPO = Path(__file__).resolve().parents[2]  # its config/contracts.toml lists CONTRACT with calendar XNAS
LONDON = Contract(CONTRACT, "AAPL", calendar="XLON")


@pytest.mark.parametrize("name", ["query_range", "bars", "book_at", "footprint", "heatmap"])
def test_each_operation_is_one_blocking_method_and_its_awaitable_form(name: str) -> None:
    blocking, awaitable = getattr(StorageQuery, f"{name}_sync"), getattr(StorageQuery, name)
    assert not inspect.iscoroutinefunction(blocking) and inspect.iscoroutinefunction(awaitable)
    assert inspect.signature(awaitable) == inspect.signature(blocking)  # the same arguments, written once
    assert awaitable.__name__ == name and (blocking.__doc__ or "") in (awaitable.__doc__ or "")


async def test_the_awaitable_form_runs_on_the_query_threads_and_answers_alike(store: TickStore) -> None:
    store.append_batch_sync(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(90)])
    store.append_batch_sync(CONTRACT, "bid_ask", [quote(T0_NS + seconds(i), i) for i in range(90)])
    end = T0_NS + seconds(90)
    with ThreadPoolExecutor(1, thread_name_prefix="asked-for") as executor:
        query = StorageQuery(store.engine, executor=executor, contracts=[LONDON])
        ticks = await query.query_range(CONTRACT, "last", T0_NS, end_time=end)
        pd.testing.assert_frame_equal(ticks, query.query_range_sync(CONTRACT, "last", T0_NS, end_time=end))
        bars = await query.bars(CONTRACT, T0_NS, end, "1m", kinds="ohlc")
        pd.testing.assert_frame_equal(bars, query.bars_sync(CONTRACT, T0_NS, end, "1m", kinds="ohlc"))
        assert bars["volume"].sum() == ticks["size"].sum()
        book = await query.book_at(CONTRACT, end)
        assert book.deltas_replayed == query.book_at_sync(CONTRACT, end).deltas_replayed == 0
        seen: list[str] = []
        original = store.engine.query

        def spy(*args: object, **kwargs: object) -> pd.DataFrame:
            seen.append(threading.current_thread().name)
            return original(*args, **kwargs)  # type: ignore[arg-type]

        store.engine.query = spy  # type: ignore[method-assign]
        try:
            await query.query_range(CONTRACT, "last", T0_NS, end)
        finally:
            store.engine.query = original  # type: ignore[method-assign]
        assert len(seen) == 1 and seen[0].startswith("asked-for")


def test_contracts_are_passed_in_not_read_from_the_current_directory(
    store: TickStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert StorageQuery(store.engine, contracts=[LONDON])._contract(CONTRACT, None).calendar == "XLON"
    # Given an engine and no contracts, it opened no settings: no contracts file is read, here or later.
    assert StorageQuery(store.engine)._contract(CONTRACT, None).calendar == "XNYS"


def test_without_an_engine_the_contracts_of_its_settings_are_read_once(
    store: TickStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    contracts = tmp_path / "contracts.toml"
    contracts.write_text('[[contracts]]\ncon_id = 424242\nsymbol = "BTC"\ncalendar = "24/7"\ntick_types = ["last"]\n')
    settings = tmp_path / "ib-stream.toml"
    settings.write_text(f'contracts_file = "{contracts}"\n\n[storage]\ndata_root = "{store.config.data_root}"\n')
    monkeypatch.setenv("IB_STREAM_CONFIG", str(settings))
    query = StorageQuery()
    try:
        contracts.unlink()  # read at construction: what happens to the file later does not matter
        monkeypatch.chdir(REPO)
        assert query._contract(424242, None).calendar == "24/7"
        assert query._contract(CONTRACT, None).calendar == "XNYS"  # not the current directory's XNAS
    finally:
        query.close()
    # With a data root of its own (`config`), the contracts still come from the settings, once.
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("IB_STREAM_CONFIG")
    readonly = StorageQuery(config=store.config)
    try:
        monkeypatch.chdir(tmp_path)
        assert readonly._contract(CONTRACT, None).calendar == "XNAS"
    finally:
        readonly.close()
