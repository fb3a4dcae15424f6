"""Settings: defaults from the issue, layered environment > config file > defaults, named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ib_stream.errors import ConfigError
from ib_stream.settings import StorageConfig, load_settings

ENV = "IB_STREAM_STORAGE__"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No IB_STREAM_* variable and no config/ib-stream.toml in the working directory leak in."""
    import os

    for name in list(os.environ):
        if name.startswith("IB_STREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_config(directory: Path, body: str, name: str = "ib-stream.toml") -> Path:
    path = directory / name
    path.write_text(body)
    return path


def test_defaults_match_the_issue() -> None:
    storage = load_settings().storage
    assert storage.buffer_duration_minutes == 120
    assert storage.buffer_rotation_minutes == 15
    assert storage.archive_compression == "zstd"
    assert storage.archive_partition_hours == 1
    assert storage.index_update_interval_seconds == 60
    assert storage.buffer_retention_hours == 24
    assert storage.archive_retention_days == 365
    assert storage.query_cache_size == 1000
    assert storage.query_cache_ttl_seconds == 300
    assert storage.max_concurrent_writes == 10
    assert storage.batch_size == 1000
    assert storage.fsync_interval_ms == 50


def test_default_paths_live_under_the_data_root() -> None:
    storage = StorageConfig(data_root=Path("/data/x"))
    assert storage.buffer_dir == Path("/data/x/buffer")
    assert storage.archive_dir == Path("/data/x/archive")
    assert storage.index_file == Path("/data/x/index.db")


def test_every_setting_has_a_description() -> None:
    undocumented = [name for name, spec in StorageConfig.model_fields.items() if not spec.description]
    assert undocumented == []


def test_config_file_overrides_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[storage]\nfsync_interval_ms = 7\nbatch_size = 5\narchive_compression = 'snappy'\n")
    storage = load_settings(config_file=path).storage
    assert (storage.fsync_interval_ms, storage.batch_size, storage.archive_compression) == (7, 5, "snappy")
    assert storage.buffer_rotation_minutes == 15  # untouched settings keep their defaults


def test_environment_overrides_the_config_file_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, "[storage]\nfsync_interval_ms = 7\nbatch_size = 5\n")
    monkeypatch.setenv(f"{ENV}FSYNC_INTERVAL_MS", "0")
    storage = load_settings(config_file=path).storage
    assert storage.fsync_interval_ms == 0  # from the environment
    assert storage.batch_size == 5  # still from the file


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{ENV}BUFFER_ROTATION_MINUTES", "5")
    monkeypatch.setenv(f"{ENV}DATA_ROOT", "/srv/ticks")
    storage = load_settings().storage
    assert storage.buffer_rotation_minutes == 5
    assert storage.index_file == Path("/srv/ticks/index.db")


def test_config_file_named_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, "[storage]\nbatch_size = 11\n", name="elsewhere.toml")
    monkeypatch.setenv("IB_STREAM_CONFIG", str(path))
    assert load_settings().storage.batch_size == 11


def test_default_config_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    write_config(tmp_path / "config", "[storage]\nbatch_size = 12\n")
    assert load_settings().storage.batch_size == 12


def test_explicit_overrides_win_over_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, "[storage]\nbatch_size = 5\n")
    monkeypatch.setenv(f"{ENV}BATCH_SIZE", "6")
    assert load_settings(config_file=path, storage={"batch_size": 3}).storage.batch_size == 3


@pytest.mark.parametrize("minutes", [7, 0, 45, 90])
def test_rotation_must_divide_an_hour(minutes: int) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(storage={"buffer_rotation_minutes": minutes})
    assert caught.value.details["field"] == "storage.buffer_rotation_minutes"
    assert "buffer_rotation_minutes" in caught.value.message
    assert str(minutes) in caught.value.message


@pytest.mark.parametrize("minutes", [1, 5, 15, 30, 60])
def test_rotations_dividing_an_hour_are_accepted(minutes: int) -> None:
    assert load_settings(storage={"buffer_rotation_minutes": minutes}).storage.buffer_rotation_minutes == minutes


def test_invalid_environment_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{ENV}FSYNC_INTERVAL_MS", "soon")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "storage.fsync_interval_ms" in caught.value.message
    assert "soon" in caught.value.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("fsync_interval_ms = -1", "storage.fsync_interval_ms"),
        ("archive_compression = 'lzma'", "storage.archive_compression"),
        ("archive_partition_hours = 5", "storage.archive_partition_hours"),
        ("query_cache_ttl_seconds = 0", "storage.query_cache_ttl_seconds"),
        ("no_such_setting = 1", "storage.no_such_setting"),
    ],
)
def test_invalid_file_value_names_the_setting_and_the_file(tmp_path: Path, body: str, field: str) -> None:
    path = write_config(tmp_path, f"[storage]\n{body}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=path)
    assert caught.value.details["field"] == field
    assert field in caught.value.message
    assert str(path) in caught.value.message


def test_unparsable_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[storage\nbatch_size = ")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=path)
    assert str(path) in caught.value.message


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=tmp_path / "nope.toml")
    assert "nope.toml" in caught.value.message


def test_settings_are_immutable() -> None:
    storage = load_settings().storage
    with pytest.raises(ValueError):
        storage.batch_size = 2  # type: ignore[misc]


def test_a_bad_environment_value_is_blamed_on_the_environment_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, "[storage]\nbatch_size = 5\n")
    monkeypatch.setenv(f"{ENV}FSYNC_INTERVAL_MS", "soon")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=path)
    assert "IB_STREAM_STORAGE__FSYNC_INTERVAL_MS" in caught.value.message
    assert str(path) not in caught.value.message
