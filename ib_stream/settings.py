"""Typed, layered settings: environment `IB_STREAM_…` > config file (TOML) > defaults.

Built explicitly at start-up (`load_settings`), never at import. Nested sections use a double
underscore in the environment: `IB_STREAM_STORAGE__FSYNC_INTERVAL_MS=0`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, TypeAdapter, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ib_stream.errors import ConfigError
from ib_stream.live_settings import AlertsConfig, JsonSinkConfig, Section

DEFAULT_CONFIG_FILE = Path("config/ib-stream.toml")
_ROTATIONS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)
_PARTITIONS = (1, 2, 3, 4, 6, 8, 12, 24)


def _future_skew(description: str) -> Any:
    # The three future-skew limits (ingest, imports, live sources) share their default and bounds.
    return Field(60, ge=0, le=86_400, description=description)


class StorageConfig(Section):
    """Where and how ticks are stored; names and meanings follow DESIGN.md §4."""

    data_root: Path = Field(Path("storage"), description="Data root; the default place of buffer, archive and index.")
    buffer_path: Path | None = Field(None, description="JSON-lines buffer directory (default <data_root>/buffer).")
    archive_path: Path | None = Field(None, description="Parquet archive directory (default <data_root>/archive).")
    index_path: Path | None = Field(None, description="SQLite catalog file (default <data_root>/index.db).")
    buffer_duration_minutes: int = Field(120, ge=1, description="How much recent data the in-memory hot cache holds.")
    buffer_rotation_minutes: int = Field(15, description="Segment length; UTC-aligned, must divide 60.")
    buffer_retention_hours: float = Field(24, gt=0, description="Archived buffer segments are deleted after this age.")
    fsync_interval_ms: int = Field(
        50, ge=0, description="Group commit: fsync at most this often (0 = fsync every batch)."
    )
    archive_compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] = Field(
        "zstd", description="Parquet codec (zstd measured smaller than snappy at similar speed)."
    )
    archive_compression_level: int = Field(3, ge=1, le=22, description="Codec level for zstd/gzip/brotli.")
    archive_partition_hours: int = Field(1, description="Archive partition length in hours; must divide 24.")
    archive_row_group_size: int = Field(131_072, ge=1024, description="Rows per Parquet row group.")
    archive_retention_days: float = Field(365, gt=0, description="Archive partitions older than this are deleted.")
    compaction_delay_seconds: int = Field(
        120, ge=0, description="How long after an archive partition closes before its parts are compacted."
    )
    retired_file_grace_seconds: int = Field(
        60,
        ge=0,
        description="Files replaced by compaction are deleted this long after no reader can need them.",
    )
    index_update_interval_seconds: int = Field(60, ge=1, description="How often the rotation/archive job runs.")
    query_cache_size: int = Field(1000, ge=0, description="Query result cache entries (0 disables the cache).")
    query_cache_ttl_seconds: float = Field(300, gt=0, description="Query result cache time-to-live.")
    query_cache_max_mb: float = Field(
        64, ge=0, description="Query result cache bound in MiB of answers held (an answer larger is not kept)."
    )
    max_concurrent_writes: int = Field(10, ge=1, description="Worker threads for archive and query file work.")
    batch_size: int = Field(1000, ge=1, description="Ticks per batch for producers and importers feeding the buffer.")
    heartbeat_seconds: float = Field(
        5, gt=0, description="How often the service notes it is alive (a crash is dated to within this)."
    )
    write_retry_seconds: float = Field(
        1.0,
        gt=0,
        description="After a failed buffer write (disk full, I/O error), the first retry waits this long; each failed "
        "retry doubles the wait.",
    )
    write_retry_max_seconds: float = Field(
        30.0, gt=0, description="The longest wait between two retries of a failing buffer write."
    )

    @field_validator("buffer_rotation_minutes")
    @classmethod
    def _rotation_divides_hour(cls, value: int) -> int:
        if value not in _ROTATIONS:
            raise ValueError(f"buffer_rotation_minutes {value} must divide 60 (one of {_ROTATIONS})")
        return value

    @field_validator("archive_partition_hours")
    @classmethod
    def _partition_divides_day(cls, value: int) -> int:
        if value not in _PARTITIONS:
            raise ValueError(f"archive_partition_hours {value} must divide 24 (one of {_PARTITIONS})")
        return value

    # The three tiers the settings can move, resolved; `Layout.of` reads them and builds every other path.
    @property
    def buffer_dir(self) -> Path:
        return self.buffer_path or self.data_root / "buffer"

    @property
    def archive_dir(self) -> Path:
        return self.archive_path or self.data_root / "archive"

    @property
    def index_file(self) -> Path:
        return self.index_path or self.data_root / "index.db"

    @property
    def service_file(self) -> Path:
        """Kept for callers outside the store: `Layout.service_file` is this path (a test checks they agree)."""
        return self.data_root / ".service.json"


class ApiConfig(Section):
    """The HTTP service and its live streams."""

    host: str = Field("127.0.0.1", description="Interface the service listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the service listens on.")
    token: SecretStr | None = Field(
        None, description="Bearer token for POST /v2/ticks and admin actions; unset = those endpoints are disabled."
    )
    heartbeat_seconds: float = Field(15, gt=0, description="SSE/WebSocket heartbeat interval while a stream is idle.")
    subscriber_queue_size: int = Field(
        10_000, ge=10, description="Messages a live subscriber may fall behind before it is disconnected."
    )
    max_range_days: float = Field(31, gt=0, description="Longest time range one tick-level request may ask for.")
    max_limit: int = Field(1_000_000, ge=1, description="Largest limit a request may ask for.")
    max_bars: int = Field(
        200_000, ge=1, le=2_000_000, description="Most bars one request may ask for: its range over its resolution."
    )
    query_timeout_seconds: float = Field(
        30, gt=0, le=3600, description="Work of one request that runs longer is stopped (503 QUERY_TIMEOUT)."
    )
    read_token_required: bool = Field(
        False,
        description="Reads need the bearer token too (all but /health and /ready); for a service beyond loopback.",
    )
    cors_origins: tuple[str, ...] = Field(
        (),
        description="Browser origins allowed to call the API (CORS), e.g. https://dash.example.com; none by default.",
    )
    shutdown_timeout_seconds: float = Field(
        10, gt=0, le=600, description="Longest a stop (SIGTERM) waits for requests to end before it closes them."
    )
    max_body_mb: float = Field(32, gt=0, le=1024, description="Largest request body (POST /v2/ticks); larger: 413.")
    live_bar_lateness_seconds: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="Live bar streams: a bar is final once ticks this long past its end have arrived.",
    )
    max_future_skew_seconds: float = _future_skew(
        "POST /v2/ticks: a tick whose ts is more than this ahead of the service clock is refused."
    )


class SimConfig(Section):
    """The built-in simulated market (the default source when no broker is configured)."""

    seed: int = Field(42, description="Random seed; the same seed gives the same ticks.")
    quotes_per_second: float = Field(20, gt=0, description="Mean quote updates per second per contract.")
    trades_per_quote: float = Field(0.25, ge=0, le=1, description="Mean trades per quote update.")
    follow_sessions: bool = Field(
        False, description="Trade only while the contract's calendar is open (default: around the clock)."
    )
    batch_ms: int = Field(50, ge=1, description="How often the simulator hands its ticks to the store.")


class ImportsConfig(Section):
    """Importing recordings into the store (`ib-stream import`)."""

    max_future_skew_seconds: float = _future_skew(
        "A recorded tick whose ts is more than this ahead of the clock is refused."
    )


class ReplayConfig(Section):
    """The replay source: re-plays a stored range into the live streams."""

    start_time: str | None = Field(None, description="Start of the range (ISO-8601 with offset).")
    end_time: str | None = Field(None, description="End of the range (ISO-8601 with offset).")
    speed: float = Field(1.0, ge=0, description="Pace as a multiple of real time; 0 = as fast as possible.")
    loop: bool = Field(False, description="Start again at the end of the range.")


class IbConfig(Section):
    """The connection to TWS / IB Gateway through the official ibapi client."""

    enabled: bool = Field(False, description="Record from IB (source auto uses IB only when this is true).")
    host: str = Field("127.0.0.1", description="Host of TWS or IB Gateway.")
    ports: tuple[int, ...] = Field(
        (7497, 4002, 7496, 4001), description="Ports tried in order: TWS paper, Gateway paper, TWS live, Gateway live."
    )
    client_id: int = Field(17, ge=0, description="API client id (unique per connection to the same TWS).")
    connect_timeout_seconds: float = Field(10, gt=0, description="How long one connection attempt may take.")
    reconnect_initial_seconds: float = Field(1, gt=0, description="First reconnect delay; doubles up to the maximum.")
    reconnect_max_seconds: float = Field(60, gt=0, description="Longest reconnect delay (jitter is added).")
    stale_after_seconds: float = Field(
        30, gt=0, description="Watchdog: no data this long while the session is open means a stale feed."
    )
    max_tick_by_tick_subscriptions: int = Field(
        5, ge=0, description="Simultaneous tick-by-tick subscriptions IB allows this account; the rest use reqMktData."
    )
    backfill_after_reconnect: bool = Field(
        True, description="Backfill a gap with reqHistoricalTicks after a reconnect."
    )
    backfill_max_seconds: float = Field(
        6 * 3600, gt=0, description="Longest part of one gap backfilled automatically (the rest: ib-stream backfill)."
    )
    backfill_delay_seconds: float = Field(
        1,
        ge=0,
        description="Wait this long after the last second of a closed gap is over before backfilling it "
        "(IB's history of a second still in progress is incomplete).",
    )
    historical_requests_per_window: int = Field(
        60, ge=1, description="IB pacing: historical requests allowed per historical_window_seconds."
    )
    historical_window_seconds: float = Field(600, gt=0, description="IB pacing window for historical requests.")
    historical_timeout_seconds: float = Field(60, gt=0, description="How long one historical request may take.")
    pacing_retry_seconds: float = Field(
        15, ge=0, description="Wait after a pacing violation before the historical request is retried."
    )
    max_messages_per_second: int = Field(
        40, ge=1, description="Requests sent to IB per second at most (IB disconnects above 50)."
    )


class Settings(BaseSettings):
    """All settings of ib-stream, one section per subsystem."""

    model_config = SettingsConfigDict(env_prefix="IB_STREAM_", env_nested_delimiter="__", extra="forbid")

    storage: StorageConfig = Field(default_factory=lambda: StorageConfig(), description="The tiered tick store.")
    api: ApiConfig = Field(default_factory=lambda: ApiConfig(), description="The HTTP service.")
    source: Literal["auto", "sim", "ib", "replay"] = Field(
        "auto", description="Where live ticks come from; auto = IB when enabled, else sim."
    )
    source_max_future_skew_seconds: float = _future_skew(
        "Live sources: a tick whose ts is more than this ahead of the service clock is refused."
    )
    ib: IbConfig = Field(default_factory=lambda: IbConfig(), description="The Interactive Brokers connection.")
    sim: SimConfig = Field(default_factory=lambda: SimConfig(), description="The simulated market.")
    replay: ReplayConfig = Field(default_factory=lambda: ReplayConfig(), description="The replay source.")
    imports: ImportsConfig = Field(default_factory=lambda: ImportsConfig(), description="Importing recordings.")
    contracts_file: Path = Field(Path("config/contracts.toml"), description="The contracts to record.")
    alerts: AlertsConfig = Field(
        default_factory=lambda: AlertsConfig(), description="Alert rules on live bars and the alert history."
    )
    json_sink: JsonSinkConfig = Field(
        default_factory=lambda: JsonSinkConfig(), description="JSON files kept current for external visualizers."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first, then what `load_settings` read from the config file, then defaults.
        return env_settings, init_settings


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings: `overrides` > environment > config file > defaults.

    The file is `config_file`, else `$IB_STREAM_CONFIG`, else `config/ib-stream.toml` when present.
    """
    path = _config_path(config_file)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read: {e}", details={"path": str(path)}) from e
    try:
        settings = Settings(**data)
        for name, value in overrides.items():
            settings = _override(settings, name, value)
        return settings
    except ValidationError as e:
        raise _config_error(e, path=path) from e


def _override(settings: Settings, name: str, value: Any) -> Settings:
    # Validate one field (or one section's fields) on its own, so the environment cannot win over it.
    if name not in Settings.model_fields:
        raise ConfigError(f"setting {name} does not exist", details={"field": name, "value": repr(value)})
    current = getattr(settings, name)
    if isinstance(current, BaseModel) and isinstance(value, dict):
        try:
            updated: Any = type(current).model_validate({**current.model_dump(), **value})
        except ValidationError as e:
            raise _config_error(e, prefix=f"{name}.") from e
    else:
        try:
            updated = TypeAdapter(Settings.model_fields[name].annotation or Any).validate_python(value)
        except ValidationError as e:
            raise _config_error(e, prefix=f"{name}." if len(e.errors()[0]["loc"]) else name) from e
    return settings.model_copy(update={name: updated})


def _config_error(e: ValidationError, prefix: str = "", path: Path | None = None) -> ConfigError:
    first = e.errors()[0]
    where = prefix + ".".join(str(p) for p in first["loc"])
    env_name = "IB_STREAM_" + "__".join(str(p) for p in first["loc"]).upper()
    if not prefix and env_name in os.environ:
        source = f" (from the environment, {env_name})"
    else:
        source = f" (from {path})" if path else ""
    return ConfigError(
        f"setting {where} = {first.get('input')!r} is invalid{source}: {first['msg']}",
        details={"field": where, "value": repr(first.get("input"))},
    )


def _config_path(config_file: Path | str | None) -> Path | None:
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", details={"path": str(path)})
        return path
    env = os.environ.get("IB_STREAM_CONFIG")
    if env:
        return _config_path(env)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None
