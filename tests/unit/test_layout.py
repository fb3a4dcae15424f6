"""The on-disk layout: every path of a data root comes from `Layout`, where the settings put it (the documented
contract of docs/concepts/storage.md is the oracle), and no other module builds one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ib_stream
from ib_stream.alerts.history import AlertHistory
from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.live_settings import AlertsConfig, JsonSinkConfig
from ib_stream.settings import StorageConfig
from ib_stream.sinks.json_sink import JsonSink
from ib_stream.storage import TickStore
from ib_stream.store.layout import Layout
from ib_stream.store.service_file import announced_service_url, service_announced
from tests.conftest import CONTRACT, T0_NS, trade

PACKAGE = Path(ib_stream.__file__).parent
LAST = StreamKey(CONTRACT, TickType.LAST)


def moved(tmp_path: Path) -> StorageConfig:
    return StorageConfig(
        data_root=tmp_path / "root",
        index_path=tmp_path / "catalog" / "ticks.db",
        buffer_path=tmp_path / "spool",
        archive_path=tmp_path / "cold",
        fsync_interval_ms=1,
    )


def test_the_default_layout_keeps_everything_in_the_data_root(tmp_path: Path) -> None:
    layout = Layout.of(StorageConfig(data_root=tmp_path))
    assert (layout.buffer_dir, layout.archive_dir, layout.index_file) == (
        tmp_path / "buffer",
        tmp_path / "archive",
        tmp_path / "index.db",
    )
    assert (layout.lock_file, layout.service_file) == (tmp_path / ".lock", tmp_path / ".service.json")
    assert (layout.snapshot_dir, layout.rollup_dir) == (tmp_path / "snapshots", tmp_path / "rollups")


def test_moved_tiers_leave_the_derived_and_own_files_in_the_data_root(tmp_path: Path) -> None:
    config = moved(tmp_path)
    layout = Layout.of(config)
    root = tmp_path / "root"
    assert (layout.buffer_dir, layout.archive_dir, layout.index_file) == (
        tmp_path / "spool",
        tmp_path / "cold",
        tmp_path / "catalog" / "ticks.db",
    )
    assert layout.lock_file == root / ".lock"
    assert layout.service_file == config.service_file == root / ".service.json"
    assert layout.snapshot_path(CONTRACT, T0_NS, 42) == (
        root / "snapshots" / f"contract_id={CONTRACT}" / "date=2025-01-10" / "hour=14.seq=000000000042.json"
    )
    assert layout.rollup_path(LAST, T0_NS) == (
        root / "rollups" / f"contract_id={CONTRACT}" / "tick_type=last" / "date=2025-01-10" / "hour=14.parquet"
    )


def test_rollup_files_are_listed_by_partition_and_temp_files_are_not(tmp_path: Path) -> None:
    layout = Layout.of(StorageConfig(data_root=tmp_path))
    hours = [T0_NS - 24 * 3600 * 10**9, T0_NS, T0_NS + 3600 * 10**9]
    for start in hours:
        path = layout.rollup_path(LAST, start)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (layout.rollup_path(LAST, T0_NS).parent / ".hour=15.parquet.tmp-7").write_bytes(b"")
    assert layout.rollup_files(LAST) == [(start, layout.rollup_path(LAST, start)) for start in hours]
    assert layout.rollup_files(StreamKey(CONTRACT, TickType.DEPTH)) == []


def test_temp_files_under_the_derived_directories_are_removed_on_open(tmp_path: Path) -> None:
    config = moved(tmp_path)
    layout = Layout.of(config)
    leftovers = [
        layout.snapshot_path(CONTRACT, T0_NS, 3).with_name(".hour=14.seq=000000000003.json.tmp-99"),
        layout.rollup_path(LAST, T0_NS).with_name(".hour=14.parquet.tmp-99"),
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"{")
    with TickStore(config, ManualClock(T0_NS)) as store:
        assert store.temp_files_removed == 2
        store.append_batch_sync(CONTRACT, "last", [trade(T0_NS)])
    assert not any(path.exists() for path in leftovers)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == [".lock", "provenance.json", "rollups", "snapshots"]
    assert (tmp_path / "catalog" / "ticks.db").is_file() and any((tmp_path / "spool").rglob("*.jsonl"))


def test_the_service_announcement_goes_to_the_data_root_not_beside_the_catalog(tmp_path: Path) -> None:
    config = moved(tmp_path)
    with service_announced(config, "127.0.0.1", 8123):
        assert (tmp_path / "root" / ".service.json").is_file()
        assert announced_service_url(config) == "http://127.0.0.1:8123"
        assert [p.name for p in (tmp_path / "root").iterdir()] == [".service.json"]  # no temp file left
    assert not (tmp_path / "root" / ".service.json").exists()


@pytest.mark.parametrize("db_path", [None, "elsewhere/alerts-history.db"])
def test_the_alert_history_is_in_the_data_root_unless_the_setting_moves_it(tmp_path: Path, db_path: str | None) -> None:
    config = AlertsConfig(db_path=None if db_path is None else tmp_path / db_path)
    history = AlertHistory.of(config, tmp_path / "root")
    try:
        assert history.path == (tmp_path / "root" / "alerts.db" if db_path is None else tmp_path / db_path)
        assert history.path.is_file()
    finally:
        history.close()


def test_the_json_sink_writes_to_viz_in_the_data_root_unless_the_setting_moves_it(tmp_path: Path) -> None:
    assert JsonSink.from_settings(JsonSinkConfig(), tmp_path).directory == tmp_path / "viz"
    assert JsonSink.from_settings(JsonSinkConfig(directory=tmp_path / "v"), tmp_path).directory == tmp_path / "v"


# What a data-root path join looks like: `<something> / "snapshots"`, os.path.join(...), and the like.
_NAMES = ("snapshots", "rollups", ".service.json", "alerts.db", "viz", ".lock", "index.db", "buffer", "archive")
_ALTERNATIVES = "|".join(re.escape(n) for n in _NAMES)
_JOIN = re.compile(rf"""/\s*f?["'](?:{_ALTERNATIVES})["']|os\.path\.join\(""")
# settings.py resolves the three settings that move a tier (Layout.of reads them) and keeps `service_file` for
# callers outside the store (equal to Layout.service_file: see above).
_SETTINGS_JOINS = ['/ "buffer"', '/ "archive"', '/ "index.db"', '/ ".service.json"']


def test_no_module_but_the_layout_builds_a_data_root_path() -> None:
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "store/layout.py":
            continue
        joins = [m.group(0) for m in _JOIN.finditer(path.read_text())]
        if joins:
            found[relative] = joins
    assert found == {"settings.py": _SETTINGS_JOINS}
