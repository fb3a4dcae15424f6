"""Provenance of a data root: every contract that receives a tick from a source other than the simulator is noted
in `provenance.json` before the tick is stored (surviving restarts), an older data root without the file is scanned
once, and source `auto` never chooses the simulator for a data root holding real ticks."""

from __future__ import annotations

import json

import pytest

from ib_stream.api.app import choose_sources
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, TickType
from ib_stream.errors import StorageError
from ib_stream.settings import StorageConfig, load_settings
from ib_stream.storage import TickStore
from tests.conftest import CONTRACT, T0_NS, quote, trade

ES = 495512563
CONTRACTS = [Contract(CONTRACT, "AAPL"), Contract(ES, "ES", calendar="CMES")]


def contents(config: StorageConfig) -> dict[str, list[str]]:
    body = json.loads((config.data_root / "provenance.json").read_text())
    assert body["version"] == 1
    return dict(body["contracts"])


def test_real_sources_are_noted_per_contract_and_survive_a_restart(config: StorageConfig, clock: ManualClock) -> None:
    with TickStore(config, clock) as store:
        assert contents(config) == {} and not store.provenance.holds_real_data
        store.append_batch_sync(ES, TickType.LAST, [trade(T0_NS)], source="sim")
        assert contents(config) == {}  # simulated ticks are not real data
        store.append_batch_sync(CONTRACT, TickType.LAST, [trade(T0_NS)], source="ib_tbt")
        store.append_batch_sync(CONTRACT, TickType.BID_ASK, [quote(T0_NS)], source="import")
        # A batch labelled sim with a tick that says otherwise is real data too.
        store.append_batch_sync(ES, TickType.LAST, [trade(T0_NS), trade(T0_NS, source="api")], source="sim")
        assert contents(config) == {str(CONTRACT): ["ib_tbt", "import"], str(ES): ["api"]}
    with TickStore(config, clock) as store:
        assert store.provenance.real_contracts() == {CONTRACT: ("ib_tbt", "import"), ES: ("api",)}
        assert store.provenance.describe() == f"{CONTRACT} (ib_tbt, import), {ES} (api)"


async def test_the_async_append_notes_too(config: StorageConfig, clock: ManualClock) -> None:
    with TickStore(config, clock) as store:
        await store.append_batch(CONTRACT, TickType.LAST, [trade(T0_NS)], source="api")
        assert store.provenance.holds_real(CONTRACT) and not store.provenance.holds_real(ES)
    assert contents(config) == {str(CONTRACT): ["api"]}


def test_a_data_root_written_before_the_file_existed_is_scanned_once(config: StorageConfig, clock: ManualClock) -> None:
    with TickStore(config, clock) as store:
        store.append_batch_sync(CONTRACT, TickType.LAST, [trade(T0_NS + i * NS_PER_SECOND) for i in range(5)], "import")
        store.append_batch_sync(CONTRACT, TickType.LAST, [trade(T0_NS + 10 * NS_PER_SECOND)], "sim")  # newer, sim
        store.append_batch_sync(ES, TickType.LAST, [trade(T0_NS)], source="sim")
        clock.set(T0_NS + 3 * 3600 * NS_PER_SECOND)
        assert store.run_archival().files_written > 0  # in Parquet now (the hot tier keeps them too)
        store.append_batch_sync(ES, TickType.BID_ASK, [quote(T0_NS + 3 * 3600 * NS_PER_SECOND)], "ib_mkt")  # hot only
    (config.data_root / "provenance.json").unlink()
    tiny_hot = config.model_copy(update={"buffer_duration_minutes": 1})
    with TickStore(tiny_hot, clock) as store:
        assert store.provenance.real_contracts() == {CONTRACT: ("import",), ES: ("ib_mkt",)}
    assert contents(config) == {str(CONTRACT): ["import"], str(ES): ["ib_mkt"]}


def test_an_unreadable_file_stops_the_store_naming_it(config: StorageConfig, clock: ManualClock) -> None:
    config.data_root.mkdir(parents=True)
    (config.data_root / "provenance.json").write_text("{not json")
    with pytest.raises(StorageError, match=r"provenance\.json is unreadable"):
        TickStore(config, clock).open()


def test_auto_runs_the_simulator_only_in_a_data_root_without_real_ticks(
    config: StorageConfig, clock: ManualClock
) -> None:
    settings = load_settings(None, storage={"data_root": str(config.data_root)}, source="auto")
    with TickStore(config, clock) as store:
        store.append_batch_sync(CONTRACT, TickType.LAST, [trade(T0_NS)], source="sim")
        choice = choose_sources(settings, CONTRACTS, clock, store.provenance)
        assert (choice.name, [s.name for s in choice.sources], choice.note) == ("sim", ["sim"], None)
        store.append_batch_sync(ES, TickType.LAST, [trade(T0_NS)], source="import")
        choice = choose_sources(settings, CONTRACTS, clock, store.provenance)
        assert (choice.name, choice.sources) == ("none", [])
        assert choice.note is not None and f"{ES} (import)" in choice.note and str(config.data_root) in choice.note
        # IB enabled: the IB source, reachable or not; an explicit sim still runs (sparing contracts with real data).
        enabled = settings.model_copy(update={"ib": settings.ib.model_copy(update={"enabled": True})})
        assert choose_sources(enabled, CONTRACTS, clock, store.provenance).name == "ib"
        explicit = settings.model_copy(update={"source": "sim"})
        assert choose_sources(explicit, CONTRACTS, clock, store.provenance).name == "sim"
