"""On-disk layout: the only code that builds or parses the paths of a data root.

Buffer segments, archive partitions and parts, the catalog (where `buffer_path`, `archive_path` and `index_path`
put them), book snapshots and rollups (always in the data root, wherever the catalog is), the lock, service,
provenance and alert files, the JSON sink's directory and temp files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey, TickType
from ib_stream.live_settings import AlertsConfig, JsonSinkConfig
from ib_stream.settings import StorageConfig

MINUTE_NS = 60 * NS_PER_SECOND
HOUR_NS = 60 * MINUTE_NS
DAY_NS = 24 * HOUR_NS
SEGMENT_SUFFIX = ".jsonl"
TEMP_MARK = ".tmp-"
SNAPSHOT_SUFFIX = ".json"
ROLLUP_SUFFIX = ".parquet"
# Files and directories of the data root itself (the buffer, archive and catalog can be moved by settings; these
# stay in the data root wherever the catalog is).
LOCK_FILE = ".lock"
SERVICE_FILE = ".service.json"
PROVENANCE_FILE = "provenance.json"
ALERTS_FILE = "alerts.db"
JSON_SINK_DIR = "viz"
SNAPSHOTS_DIR = "snapshots"
ROLLUPS_DIR = "rollups"
RESTING_KIND = "resting"  # the heatmap rollups of a depth stream: tick_type=depth-resting
_SEGMENT_RE = re.compile(r"^(\d{8}T\d{4})\.jsonl$")
_PARTITION_RE = re.compile(
    r"contract_id=(?P<cid>-?\d+)/tick_type=(?P<tt>[a-z_]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})$"
)
_SNAPSHOT_RE = re.compile(r"^hour=(\d{2})\.seq=(\d+)\.json$")
_DATE_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_ROLLUP_RE = re.compile(r"^hour=(\d{2})\.parquet$")


@dataclass(frozen=True, slots=True, order=True)
class Segment:
    """One buffer segment file: a stream's ticks that arrived in [start_ns, end_ns)."""

    start_ns: int
    end_ns: int
    stream: StreamKey
    path: Path


@dataclass(frozen=True, slots=True, order=True)
class Partition:
    """One archive partition: a stream's ticks whose event time is in [start_ns, end_ns)."""

    stream: StreamKey
    start_ns: int
    end_ns: int


class Layout:
    """Every path of one data root: the buffer, archive and catalog where the settings put them, and the files
    derived from them (snapshots, rollups) and the data root's own files in the data root."""

    def __init__(
        self,
        data_root: Path,
        buffer_dir: Path,
        archive_dir: Path,
        index_file: Path,
        rotation_minutes: int,
        partition_hours: int,
    ) -> None:
        self.data_root = data_root
        self.buffer_dir = buffer_dir
        self.archive_dir = archive_dir
        self.index_file = index_file
        self.segment_ns = rotation_minutes * MINUTE_NS
        self.partition_ns = partition_hours * HOUR_NS

    @classmethod
    def of(cls, config: StorageConfig) -> Layout:
        """The layout of a data root as the storage settings place it: `buffer_path`, `archive_path` and
        `index_path` move those tiers (`StorageConfig.buffer_dir` / `archive_dir` / `index_file` resolve them);
        everything else stays in `data_root`, wherever the catalog is."""
        return cls(
            config.data_root,
            config.buffer_dir,
            config.archive_dir,
            config.index_file,
            config.buffer_rotation_minutes,
            config.archive_partition_hours,
        )

    # ---- the data root's own files ------------------------------------------------------------
    @property
    def lock_file(self) -> Path:
        """Held by the one process that writes to the data root."""
        return lock_path(self.data_root)

    @property
    def service_file(self) -> Path:
        """Where `ib-stream serve` writes its URL and pid while it runs."""
        return self.data_root / SERVICE_FILE

    @property
    def provenance_file(self) -> Path:
        """Which contracts hold non-simulated ticks (`store.provenance`): the simulator never writes to them."""
        return self.data_root / PROVENANCE_FILE

    @property
    def snapshot_dir(self) -> Path:
        """The directory of the book snapshots."""
        return self.data_root / SNAPSHOTS_DIR

    @property
    def rollup_dir(self) -> Path:
        """The directory of the 1-second rollups (trade streams and depth)."""
        return self.data_root / ROLLUPS_DIR

    # ---- buffer -------------------------------------------------------------------------------
    def segment_start(self, ts_ns: int) -> int:
        """Return the start of the UTC-aligned segment window holding `ts_ns`."""
        return ts_ns - ts_ns % self.segment_ns

    def stream_dir(self, stream: StreamKey) -> Path:
        return self.buffer_dir / str(stream.contract_id) / stream.tick_type.value

    def segment(self, stream: StreamKey, start_ns: int) -> Segment:
        name = datetime.fromtimestamp(start_ns // NS_PER_SECOND, tz=UTC).strftime("%Y%m%dT%H%M") + SEGMENT_SUFFIX
        return Segment(start_ns, start_ns + self.segment_ns, stream, self.stream_dir(stream) / name)

    def segments(self, stream: StreamKey) -> list[Segment]:
        """List a stream's segment files, oldest first."""
        directory = self.stream_dir(stream)
        found: list[Segment] = []
        if not directory.is_dir():
            return found
        for entry in os.scandir(directory):
            match = _SEGMENT_RE.match(entry.name)
            if match:
                start = datetime.strptime(match.group(1), "%Y%m%dT%H%M").replace(tzinfo=UTC)
                start_ns = int(start.timestamp()) * NS_PER_SECOND
                found.append(Segment(start_ns, start_ns + self.segment_ns, stream, Path(entry.path)))
        return sorted(found)

    def buffered_streams(self) -> list[StreamKey]:
        """List the streams that have a buffer directory."""
        streams: list[StreamKey] = []
        if not self.buffer_dir.is_dir():
            return streams
        for contract in os.scandir(self.buffer_dir):
            if not (contract.is_dir() and _is_int(contract.name)):
                continue
            for tick_dir in os.scandir(contract.path):
                if tick_dir.is_dir() and tick_dir.name in TickType._value2member_map_:
                    streams.append(StreamKey(int(contract.name), TickType(tick_dir.name)))
        return sorted(streams)

    # ---- archive ------------------------------------------------------------------------------
    def partition_dir(self, partition: Partition) -> Path:
        when = datetime.fromtimestamp(partition.start_ns // NS_PER_SECOND, tz=UTC)
        stream = partition.stream
        return (
            self.archive_dir
            / f"contract_id={stream.contract_id}"
            / f"tick_type={stream.tick_type.value}"
            / f"date={when:%Y-%m-%d}"
            / f"hour={when:%H}"
        )

    def part_path(self, partition: Partition, first_seq: int, last_seq: int) -> Path:
        """Path of the part archived from one segment (deterministic, so re-running overwrites it)."""
        return self.partition_dir(partition) / f"part-{first_seq:012d}-{last_seq:012d}.parquet"

    def compacted_path(self, partition: Partition, first_seq: int, last_seq: int, rows: int) -> Path:
        """Path of a partition's compacted file (deterministic for the same inputs)."""
        return self.partition_dir(partition) / f"hour-{first_seq:012d}-{last_seq:012d}-{rows}.parquet"

    def relative(self, path: Path) -> str:
        """The catalog stores archive paths relative to the archive directory."""
        return path.relative_to(self.archive_dir).as_posix()

    def absolute(self, relative: str) -> Path:
        return self.archive_dir / relative

    def parse_partition(self, relative_dir: str) -> Partition | None:
        """Parse `contract_id=…/tick_type=…/date=…/hour=…` back into a partition."""
        match = _PARTITION_RE.search(relative_dir)
        if not match or match.group("tt") not in TickType._value2member_map_:
            return None
        start_ns = _hour_ns(match.group("date"), match.group("hour"))
        stream = StreamKey(int(match.group("cid")), TickType(match.group("tt")))
        return Partition(stream, start_ns, start_ns + self.partition_ns)

    def archive_files(self) -> Iterator[Path]:
        """Every Parquet file under the archive (temp files excluded)."""
        if self.archive_dir.is_dir():
            for path in self.archive_dir.rglob("*.parquet"):
                if TEMP_MARK not in path.name:
                    yield path

    # ---- book snapshots -----------------------------------------------------------------------
    # <snapshot_dir>/contract_id=<id>/date=<YYYY-MM-DD>/hour=<HH>.seq=<built_seq>.json: the L2 book of a contract's
    # depth stream at the partition boundary <date>T<HH>:00Z, built from every depth tick with ts before it;
    # built_seq is the highest seq among them (see ib_stream.store.snapshots).
    def snapshot_contract_dir(self, contract_id: int) -> Path:
        return self.snapshot_dir / f"contract_id={contract_id}"

    def snapshot_path(self, contract_id: int, boundary_ns: int, built_seq: int) -> Path:
        """Path of the book snapshot of `contract_id` at the hour boundary `boundary_ns`, built up to `built_seq`."""
        when = datetime.fromtimestamp(boundary_ns // NS_PER_SECOND, tz=UTC)
        return (
            self.snapshot_contract_dir(contract_id)
            / f"date={when:%Y-%m-%d}"
            / f"hour={when:%H}.seq={built_seq:012d}{SNAPSHOT_SUFFIX}"
        )

    def snapshot_dates(self, contract_id: int) -> list[tuple[int, Path]]:
        """(UTC midnight ns, directory) of each date holding snapshots of a contract, oldest first."""
        directory = self.snapshot_contract_dir(contract_id)
        found: list[tuple[int, Path]] = []
        if not directory.is_dir():
            return found
        for entry in os.scandir(directory):
            match = _DATE_RE.match(entry.name)
            if match and entry.is_dir():
                found.append((_hour_ns(match.group(1), "00"), Path(entry.path)))
        return sorted(found)

    @staticmethod
    def snapshot_files(date_dir: Path, day_ns: int) -> list[tuple[int, int, Path]]:
        """(boundary ns, built_seq, path) of the snapshot files in one date directory, by boundary then seq."""
        found: list[tuple[int, int, Path]] = []
        for entry in os.scandir(date_dir):
            match = _SNAPSHOT_RE.match(entry.name)
            if match:
                found.append((day_ns + int(match.group(1)) * HOUR_NS, int(match.group(2)), Path(entry.path)))
        return sorted(found)

    def snapshot_contracts(self) -> list[int]:
        """Contract ids that have a snapshot directory."""
        if not self.snapshot_dir.is_dir():
            return []
        names = (entry.name.removeprefix("contract_id=") for entry in os.scandir(self.snapshot_dir) if entry.is_dir())
        return sorted(int(name) for name in names if _is_int(name))

    # ---- 1-second rollups ---------------------------------------------------------------------
    # <rollup_dir>/contract_id=<id>/tick_type=<last|all_last|depth>/date=<YYYY-MM-DD>/hour=<HH>.parquet: the
    # 1-second rows of one partition (see ib_stream.store.rollups and depth_rollups), outside the archive so
    # archive scans never see them. Another kind of rollup of the same stream (`kind`, e.g. the heatmap's
    # per-second resting sums of depth) lives beside it in tick_type=<type>-<kind>.
    def rollup_stream_dir(self, stream: StreamKey, kind: str = "") -> Path:
        name = stream.tick_type.value + (f"-{kind}" if kind else "")
        return self.rollup_dir / f"contract_id={stream.contract_id}" / f"tick_type={name}"

    def rollup_path(self, stream: StreamKey, partition_start_ns: int, kind: str = "") -> Path:
        """Path of the rollup of `stream` (a trade stream, or depth) for the partition starting at the given ns."""
        when = datetime.fromtimestamp(partition_start_ns // NS_PER_SECOND, tz=UTC)
        return self.rollup_stream_dir(stream, kind) / f"date={when:%Y-%m-%d}" / f"hour={when:%H}{ROLLUP_SUFFIX}"

    def rollup_files(self, stream: StreamKey, kind: str = "") -> list[tuple[int, Path]]:
        """(partition start ns, path) of the rollup files of a stream, oldest first (temp files excluded)."""
        found: list[tuple[int, Path]] = []
        root = self.rollup_stream_dir(stream, kind)
        if not root.is_dir():
            return found
        for date_dir in os.scandir(root):
            day = _DATE_RE.match(date_dir.name)
            if not (day and date_dir.is_dir()):
                continue
            for entry in os.scandir(date_dir.path):
                hour = _ROLLUP_RE.match(entry.name)
                if hour:
                    found.append((_hour_ns(day.group(1), hour.group(1)), Path(entry.path)))
        return sorted(found)

    # ---- temp files ---------------------------------------------------------------------------
    def temp_files(self) -> Iterator[Path]:
        """Leftover temp files from an interrupted write (archive, buffer, snapshots, rollups)."""
        for root in (self.archive_dir, self.buffer_dir, self.snapshot_dir, self.rollup_dir):
            if root.is_dir():
                yield from (p for p in root.rglob(f"*{TEMP_MARK}*") if p.is_file())


def lock_path(data_root: Path) -> Path:
    """The lock file of a data root (for tools that lock it knowing only the data root)."""
    return data_root / LOCK_FILE


def alerts_path(config: AlertsConfig, data_root: Path) -> Path:
    """The alert history file: `alerts.db_path`, else `<data_root>/alerts.db`."""
    return config.db_path or data_root / ALERTS_FILE


def json_sink_dir(config: JsonSinkConfig, data_root: Path) -> Path:
    """The JSON sink's directory: `json_sink.directory`, else `<data_root>/viz`."""
    return config.directory or data_root / JSON_SINK_DIR


def temp_path(final: Path) -> Path:
    """A temp file beside `final`, unique to this process."""
    return final.with_name(f".{final.name}{TEMP_MARK}{os.getpid()}")


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hour_ns(date: str, hour: str) -> int:
    start = datetime.strptime(f"{date} {hour}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    return int(start.timestamp()) * NS_PER_SECOND


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()
