"""The command line against a real data root: archive, verify, index rebuild, query, stats and its errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner, Result

from ib_stream import cli_support
from ib_stream.cli import app
from ib_stream.clock import ManualClock
from ib_stream.settings import StorageConfig
from ib_stream.storage import PartitionIndex, StorageQuery, TickStore
from ib_stream.store.readonly import open_readonly_engine
from ib_stream.store.service_file import announced_service_url, service_announced, withdraw_service
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade

START, END = "2025-01-10T14:00:00Z", "2025-01-10T16:00:00Z"
TICKS_PER_BATCH = 50


@pytest.fixture
def data_root(store: TickStore, config: StorageConfig, clock: ManualClock) -> StorageConfig:
    """A closed data root: 14:00–15:00 archived in four parts per stream, 15:00–15:05 still in the buffer."""
    for batch in range(5):
        first = T0_NS + seconds(batch * 900)
        store.append_batch_sync(CONTRACT, "last", [trade(first + seconds(j), j) for j in range(TICKS_PER_BATCH)])
        store.append_batch_sync(CONTRACT, "bid_ask", [quote(first + seconds(j), j) for j in range(TICKS_PER_BATCH)])
        if batch == 3:
            clock.advance(900)  # 15:00: the four segments of 14:xx are sealed
            store.run_archival()
        else:
            clock.advance(900)
    store.close()  # the CLI opens the root itself (the real clock sees every 2025 segment as sealed)
    return config


def run(config: StorageConfig, *args: str) -> Result:
    # A wide terminal so that tables never shorten paths.
    return CliRunner().invoke(app, ["--data-dir", str(config.data_root), *args], env={"COLUMNS": "300"})


def library_query(config: StorageConfig, tick_types: str, start: str = START, end: str = END) -> pd.DataFrame:
    query = StorageQuery(open_readonly_engine(config))
    try:
        return query.query_range_sync(CONTRACT, tick_types, start, end)
    finally:
        query.close()


def catalog_files(config: StorageConfig) -> list[str]:
    index = PartitionIndex(config.index_file, readonly=True)
    try:
        return [f.file_path for f in index.files()]
    finally:
        index.close()


def missing_as_none(frame: pd.DataFrame) -> pd.DataFrame:
    objects = [c for c in frame.columns if frame[c].dtype == object]
    return frame.assign(**{c: frame[c].where(frame[c].notna(), None) for c in objects})


def assert_clean_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr


# ---- archive -----------------------------------------------------------------------------------------


def test_archive_moves_sealed_segments_into_the_archive(data_root: StorageConfig) -> None:
    before = library_query(data_root, "bid_ask,last")
    result = run(data_root, "archive")
    assert result.exit_code == 0, result.output
    assert "archive" in result.stdout
    assert f"{2 * TICKS_PER_BATCH}" in result.stdout  # the one unarchived segment of each stream
    index = PartitionIndex(data_root.index_file, readonly=True)
    try:
        assert set(index.archived_seqs().values()) == {5 * TICKS_PER_BATCH}
    finally:
        index.close()
    assert library_query(data_root, "bid_ask,last").equals(before)
    again = run(data_root, "archive")
    assert again.exit_code == 0
    assert len(catalog_files(data_root)) == 10  # re-running archives nothing twice


def test_archive_compact_merges_closed_hours(data_root: StorageConfig) -> None:
    before = library_query(data_root, "bid_ask,last")
    result = run(data_root, "archive", "--compact")
    assert result.exit_code == 0, result.output
    assert "compact" in result.stdout
    files = catalog_files(data_root)
    # 14:00 had four parts per stream: now one compacted file each; 15:00 has a single part each.
    assert sorted(Path(f).name.split("-")[0] for f in files) == ["hour", "hour", "part", "part"]
    assert library_query(data_root, "bid_ask,last").equals(before)


def test_archive_retention_drops_data_past_retention(data_root: StorageConfig) -> None:
    # The fixture's ticks are from January 2025: more than archive_retention_days (365) ago.
    result = run(data_root, "archive", "--retention")
    assert result.exit_code == 0, result.output
    assert "retention" in result.stdout
    assert catalog_files(data_root) == []


def test_archive_refuses_a_locked_data_root(data_root: StorageConfig) -> None:
    with TickStore(data_root):
        result = run(data_root, "archive")
    assert_clean_error(result, 2, "in use", str(data_root.data_root))


# ---- verify and index rebuild -----------------------------------------------------------------------


def test_verify_clean_root_exits_0(data_root: StorageConfig) -> None:
    result = run(data_root, "verify")
    assert result.exit_code == 0, result.output
    assert "ok: 8 catalogued files" in result.stdout


def test_verify_reports_a_corrupted_file_and_exits_1(data_root: StorageConfig) -> None:
    victim = catalog_files(data_root)[0]
    path = data_root.archive_dir / victim
    data = bytearray(path.read_bytes())
    data[8] ^= 0xFF  # inside the first data page: same size, readable footer, only the checksum can tell
    path.write_bytes(bytes(data))
    result = run(data_root, "verify")
    assert result.exit_code == 1, result.output
    assert "checksum" in result.stdout
    assert victim in result.stdout
    assert run(data_root, "verify", "--no-checksums").exit_code == 0


def test_verify_reports_truncated_and_missing_files(data_root: StorageConfig) -> None:
    truncated, missing = catalog_files(data_root)[:2]
    (data_root.archive_dir / truncated).write_bytes(b"PAR1")
    (data_root.archive_dir / missing).unlink()
    result = run(data_root, "verify", "--no-checksums")
    assert result.exit_code == 1
    for fragment in (truncated, missing, "missing", "size", "unreadable"):
        assert fragment in result.stdout


def test_verify_without_a_catalog_exits_2(tmp_path: Path) -> None:
    config = StorageConfig(data_root=tmp_path)
    assert_clean_error(run(config, "verify"), 2, "no catalog", str(config.index_file))


def test_index_rebuild_recreates_the_catalog(data_root: StorageConfig) -> None:
    before = library_query(data_root, "bid_ask,last")
    files = sorted(catalog_files(data_root))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{data_root.index_file}{suffix}").unlink(missing_ok=True)
    result = run(data_root, "index", "rebuild")
    assert result.exit_code == 0, result.output
    assert f"8 files, {8 * TICKS_PER_BATCH} ticks, 0 superseded" in result.stdout
    assert sorted(catalog_files(data_root)) == files
    assert run(data_root, "verify").exit_code == 0
    assert library_query(data_root, "bid_ask,last").equals(before)


def test_index_rebuild_refuses_while_a_writer_holds_the_root(data_root: StorageConfig) -> None:
    with TickStore(data_root):
        result = run(data_root, "index", "rebuild")
    assert_clean_error(result, 2, "in use")


# ---- query --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tick_types", ["bid_ask,last", "last"])
def test_query_to_csv_equals_the_library(data_root: StorageConfig, tmp_path: Path, tick_types: str) -> None:
    out = tmp_path / "ticks.csv"
    result = run(
        data_root,
        "query",
        str(CONTRACT),
        "--tick-types",
        tick_types,
        "--start",
        START,
        "--end",
        END,
        "--output",
        str(out),
    )
    assert result.exit_code == 0, result.output
    expected = library_query(data_root, tick_types)
    assert len(expected) == 5 * TICKS_PER_BATCH * len(tick_types.split(","))  # archive and buffer both answer
    assert out.read_text() == expected.to_csv(index=False)


def test_query_to_parquet_equals_the_library(data_root: StorageConfig, tmp_path: Path) -> None:
    out = tmp_path / "ticks.parquet"
    result = run(
        data_root,
        "query",
        str(CONTRACT),
        "--tick-types",
        "bid_ask,last",
        "--start",
        START,
        "--end",
        END,
        "--output",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {10 * TICKS_PER_BATCH} rows" in result.stdout
    # Merged frames hold flags of the other type as NaN in object columns; Parquet gives them back as None.
    pd.testing.assert_frame_equal(
        missing_as_none(pd.read_parquet(out)), missing_as_none(library_query(data_root, "bid_ask,last"))
    )


def test_query_bars_and_limit(data_root: StorageConfig, tmp_path: Path) -> None:
    out = tmp_path / "bars.parquet"
    args = ["query", str(CONTRACT), "--tick-types", "last", "--start", START, "--end", END]
    result = run(data_root, *args, "--resolution", "1m", "--limit", "7", "--output", str(out))
    assert result.exit_code == 0, result.output
    query = StorageQuery(open_readonly_engine(data_root))
    expected = query.query_range_sync(CONTRACT, "last", START, END, resolution="1m")
    query.close()
    assert len(expected) == 120
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected.head(7))


def test_query_prints_a_table(data_root: StorageConfig) -> None:
    result = run(
        data_root, "query", str(CONTRACT), "--tick-types", "last", "--start", START, "--end", END, "--limit", "3"
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "timestamp" in lines[0] and "price" in lines[0]
    assert sum("2025-01-10T14:00:0" in line for line in lines) == 3
    assert f"{5 * TICKS_PER_BATCH} rows, 3 shown" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--start", "2025-01-10T14:00:00"], ["--start", "2025-01-10T14:00:00", "UTC offset"]),
        (["--start", START, "--end", "2025-01-10T15:00"], ["--end", "2025-01-10T15:00", "UTC offset"]),
        (["--start", "yesterday"], ["--start", "yesterday", "ISO-8601"]),
        (["--start", END, "--end", START], ["--end", "is not after --start"]),
        (["--start", START, "--output", "ticks.xlsx"], ["--output", "ticks.xlsx", ".csv", ".parquet"]),
        (["--start", START, "--resolution", "2m"], ["resolution", "2m"]),
    ],
)
def test_query_bad_input_exits_2_naming_the_option(
    data_root: StorageConfig, args: Sequence[str], fragments: Sequence[str]
) -> None:
    result = run(data_root, "query", str(CONTRACT), "--tick-types", "last", *args)
    assert_clean_error(result, 2, *fragments)


def test_query_bad_tick_type_exits_2(data_root: StorageConfig) -> None:
    result = run(data_root, "query", str(CONTRACT), "--tick-types", "bogus", "--start", START)
    assert_clean_error(result, 2, "bogus", "tick type")


# ---- stats, settings, serve ---------------------------------------------------------------------------


def test_stats_shows_archive_buffer_and_daily_statistics(data_root: StorageConfig) -> None:
    result = run(data_root, "stats")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for fragment in ("archive", "buffer", "daily statistics", f"{CONTRACT} last", f"{CONTRACT} bid_ask", "2025-01-10"):
        assert fragment in out
    last_row = next(line for line in out.splitlines() if line.strip().startswith(f"{CONTRACT} last"))
    assert last_row.split()[2:4] == ["4", f"{4 * TICKS_PER_BATCH}"]  # files, ticks


def test_stats_of_an_unknown_contract_exits_2(data_root: StorageConfig) -> None:
    assert_clean_error(run(data_root, "stats", "--contract", "1"), 2, "contract 1")
    assert run(data_root, "stats", "--contract", str(CONTRACT)).exit_code == 0


def test_config_file_is_read_and_data_dir_overrides_it(data_root: StorageConfig, tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[storage]\ndata_root = "{data_root.data_root}"\n')
    result = CliRunner().invoke(app, ["--config", str(settings), "stats"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert f"{CONTRACT} last" in result.stdout
    elsewhere = CliRunner().invoke(app, ["--config", str(settings), "--data-dir", str(tmp_path / "nowhere"), "stats"])
    assert_clean_error(elsewhere, 2, "nowhere", "does not exist")


def test_data_dir_wins_over_the_environment(data_root: StorageConfig, tmp_path: Path) -> None:
    env = {"IB_STREAM_STORAGE__DATA_ROOT": str(tmp_path / "elsewhere"), "COLUMNS": "300"}
    result = CliRunner().invoke(app, ["--data-dir", str(data_root.data_root), "stats"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{CONTRACT} last" in result.stdout


def test_bad_settings_exit_2(data_root: StorageConfig, tmp_path: Path) -> None:
    assert_clean_error(
        CliRunner().invoke(app, ["--config", str(tmp_path / "missing.toml"), "stats"]), 2, "missing.toml"
    )
    bad = CliRunner().invoke(
        app, ["--data-dir", str(data_root.data_root), "stats"], env={"IB_STREAM_STORAGE__FSYNC_INTERVAL_MS": "-5"}
    )
    assert_clean_error(bad, 2, "fsync_interval_ms")


def test_serve_rejects_an_unknown_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--port", "8123", "--source", "nasdaq", "--data-dir", str(tmp_path)])
    assert_clean_error(result, 2, "source")


def test_console_script_entry_point(data_root: StorageConfig) -> None:
    command = [sys.executable, "-c", "from ib_stream.cli import main; main()", "--data-dir", str(data_root.data_root)]
    ok = subprocess.run([*command, "verify"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    naive = subprocess.run(
        [*command, "query", "1", "--tick-types", "last", "--start", "2025-01-10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert naive.returncode == 2
    assert (
        naive.stderr.strip()
        == "error: --start 2025-01-10 has no UTC offset: add Z or +HH:MM (e.g. 2025-01-10T14:30:00Z)"
    )


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:8123"), ("0.0.0.0", "http://127.0.0.1:8123"), ("::1", "http://[::1]:8123")],
)
def test_serve_announces_its_url_in_the_data_root_while_it_runs(tmp_path: Path, host: str, url: str) -> None:
    config = StorageConfig(data_root=tmp_path / "new-root")
    assert announced_service_url(config) is None
    with service_announced(config, host, 8123):
        assert announced_service_url(config) == url
    assert not config.service_file.exists()
    assert announced_service_url(config) is None


def test_an_announcement_left_by_a_killed_service_is_ignored(tmp_path: Path) -> None:
    config = StorageConfig(data_root=tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    config.service_file.write_text(f'{{"url": "http://127.0.0.1:1", "pid": {int(dead.stdout)}}}')
    assert announced_service_url(config) is None
    config.service_file.write_text("{not json")
    assert announced_service_url(config) is None


# ---- --data-dir after the command, output that is not a terminal -------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["archive"],
        ["index", "rebuild"],
        ["verify"],
        ["query", str(CONTRACT), "--tick-types", "last", "--start", START, "--end", END],
        ["stats"],
        ["bars", str(CONTRACT), "--start", START, "--end", END],
        ["coverage", "--contract", str(CONTRACT)],
    ],
    ids=lambda args: "-".join(args[:2]) if args[0] == "index" else args[0],
)
def test_every_command_on_a_data_root_takes_data_dir_which_wins_over_the_global_one(
    data_root: StorageConfig, tmp_path: Path, args: list[str]
) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(f'contracts_file = "{Path(__file__).resolve().parents[2] / "config" / "contracts.toml"}"\n')
    result = CliRunner().invoke(
        app,
        [
            "--config",
            str(settings),
            "--data-dir",
            str(tmp_path / "nowhere"),
            *args,
            "--data-dir",
            str(data_root.data_root),
        ],
    )
    assert result.exit_code == 0, result.output


def test_messages_are_not_wrapped_when_output_is_not_a_terminal(data_root: StorageConfig) -> None:
    long = f"message {'x' * 150} {data_root.data_root}/{'y' * 100}"

    def printed() -> None:
        cli_support.out().print(long)

    runner = typer.Typer()
    runner.command()(printed)
    result = CliRunner().invoke(runner, [])
    assert result.stdout == long + "\n"


def test_tables_and_paths_in_a_pipe_are_whole_lines_without_trailing_blanks(data_root: StorageConfig) -> None:
    victim = catalog_files(data_root)[0]
    (data_root.archive_dir / victim).write_bytes(b"PAR1")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    command = [
        sys.executable,
        "-m",
        "ib_stream.cli",
        "verify",
        "--no-checksums",
        "--data-dir",
        str(data_root.data_root),
    ]
    piped = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert piped.returncode == 1, piped.stderr
    lines = piped.stdout.splitlines()
    assert len(lines) == 5  # title, header, rule, and one row for each of the file's two problems
    assert all(line == line.rstrip() for line in lines)
    rows = [line for line in lines if victim in line]
    assert len(rows) == 2 and all(len(row) > 80 for row in rows)


# ---- the service announcement belongs to the process it names ----------------------------------------------


def test_withdrawing_the_announcement_leaves_another_process_s_file(tmp_path: Path) -> None:
    config = StorageConfig(data_root=tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = f'{{"url": "http://127.0.0.1:8000", "pid": {other.pid}}}'
        config.service_file.write_text(theirs)
        assert withdraw_service(config) is False
        assert config.service_file.read_text() == theirs
        with service_announced(config, "127.0.0.1", 8123):
            config.service_file.write_text(theirs)  # another serve took over the data root meanwhile
        assert config.service_file.read_text() == theirs
        assert announced_service_url(config) == "http://127.0.0.1:8000"
    finally:
        other.kill()
        other.wait()
    with service_announced(config, "127.0.0.1", 8123):
        assert announced_service_url(config) == "http://127.0.0.1:8123"
    assert not config.service_file.exists()  # its own: removed
