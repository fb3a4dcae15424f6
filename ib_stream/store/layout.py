"""On-disk layout: the only code that builds or parses buffer, archive and temp-file paths."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey, TickType

MINUTE_NS = 60 * NS_PER_SECOND
HOUR_NS = 60 * MINUTE_NS
DAY_NS = 24 * HOUR_NS
SEGMENT_SUFFIX = ".jsonl"
TEMP_MARK = ".tmp-"
_SEGMENT_RE = re.compile(r"^(\d{8}T\d{4})\.jsonl$")
_PARTITION_RE = re.compile(
    r"contract_id=(?P<cid>-?\d+)/tick_type=(?P<tt>[a-z_]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})$"
)


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
    """Paths of the buffer segments and archive partitions under the configured directories."""

    def __init__(self, buffer_dir: Path, archive_dir: Path, rotation_minutes: int, partition_hours: int) -> None:
        self.buffer_dir = buffer_dir
        self.archive_dir = archive_dir
        self.segment_ns = rotation_minutes * MINUTE_NS
        self.partition_ns = partition_hours * HOUR_NS

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
        start = datetime.strptime(f"{match.group('date')} {match.group('hour')}", "%Y-%m-%d %H").replace(tzinfo=UTC)
        start_ns = int(start.timestamp()) * NS_PER_SECOND
        stream = StreamKey(int(match.group("cid")), TickType(match.group("tt")))
        return Partition(stream, start_ns, start_ns + self.partition_ns)

    def archive_files(self) -> Iterator[Path]:
        """Every Parquet file under the archive (temp files excluded)."""
        if self.archive_dir.is_dir():
            for path in self.archive_dir.rglob("*.parquet"):
                if TEMP_MARK not in path.name:
                    yield path

    def temp_files(self) -> Iterator[Path]:
        """Leftover temp files from an interrupted write."""
        for root in (self.archive_dir, self.buffer_dir):
            if root.is_dir():
                yield from (p for p in root.rglob(f"*{TEMP_MARK}*") if p.is_file())


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


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


# ---- book snapshots (issue 5) -------------------------------------------------------------------
# <data_root>/snapshots/contract_id=<id>/date=<YYYY-MM-DD>/hour=<HH>.seq=<built_seq>.json: the L2 book of a
# contract's depth stream at the partition boundary <date>T<HH>:00Z, built from every depth tick with
# ts before it; built_seq is the highest seq among them (see ib_stream.store.snapshots).
SNAPSHOT_SUFFIX = ".json"
_SNAPSHOT_RE = re.compile(r"^hour=(\d{2})\.seq=(\d+)\.json$")
_SNAPSHOT_DATE_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


def snapshot_root(data_root: Path) -> Path:
    """The directory of the book snapshots of a data root."""
    return data_root / "snapshots"


def snapshot_contract_dir(root: Path, contract_id: int) -> Path:
    return root / f"contract_id={contract_id}"


def snapshot_path(root: Path, contract_id: int, boundary_ns: int, built_seq: int) -> Path:
    """Path of the book snapshot of `contract_id` at the hour boundary `boundary_ns`, built up to `built_seq`."""
    when = datetime.fromtimestamp(boundary_ns // NS_PER_SECOND, tz=UTC)
    return (
        snapshot_contract_dir(root, contract_id)
        / f"date={when:%Y-%m-%d}"
        / f"hour={when:%H}.seq={built_seq:012d}{SNAPSHOT_SUFFIX}"
    )


def snapshot_dates(root: Path, contract_id: int) -> list[tuple[int, Path]]:
    """(UTC midnight ns, directory) of each date holding snapshots of a contract, oldest first."""
    directory = snapshot_contract_dir(root, contract_id)
    found: list[tuple[int, Path]] = []
    if not directory.is_dir():
        return found
    for entry in os.scandir(directory):
        match = _SNAPSHOT_DATE_RE.match(entry.name)
        if match and entry.is_dir():
            day = datetime.strptime(match.group(1), "%Y-%m-%d").replace(tzinfo=UTC)
            found.append((int(day.timestamp()) * NS_PER_SECOND, Path(entry.path)))
    return sorted(found)


def snapshot_files(date_dir: Path, day_ns: int) -> list[tuple[int, int, Path]]:
    """(boundary ns, built_seq, path) of the snapshot files in one date directory, by boundary then seq."""
    found: list[tuple[int, int, Path]] = []
    for entry in os.scandir(date_dir):
        match = _SNAPSHOT_RE.match(entry.name)
        if match:
            found.append((day_ns + int(match.group(1)) * HOUR_NS, int(match.group(2)), Path(entry.path)))
    return sorted(found)


def snapshot_contracts(root: Path) -> list[int]:
    """Contract ids that have a snapshot directory."""
    if not root.is_dir():
        return []
    names = (entry.name.removeprefix("contract_id=") for entry in os.scandir(root) if entry.is_dir())
    return sorted(int(name) for name in names if _is_int(name))


# ---- 1-second order-flow rollups (issue 5) ------------------------------------------------------
# <data_root>/rollups/contract_id=<id>/tick_type=<last|all_last>/date=<YYYY-MM-DD>/hour=<HH>.parquet: the
# 1-second rows of one trade partition (see ib_stream.store.rollups), outside the archive so archive scans
# never see them.
ROLLUP_SUFFIX = ".parquet"


def rollup_root(data_root: Path) -> Path:
    """The directory of the 1-second rollups of a data root."""
    return data_root / "rollups"


def rollup_path(root: Path, stream: StreamKey, partition_start_ns: int) -> Path:
    """Path of the rollup of the trade stream `stream` for the partition starting at `partition_start_ns`."""
    when = datetime.fromtimestamp(partition_start_ns // NS_PER_SECOND, tz=UTC)
    return (
        root
        / f"contract_id={stream.contract_id}"
        / f"tick_type={stream.tick_type.value}"
        / f"date={when:%Y-%m-%d}"
        / f"hour={when:%H}{ROLLUP_SUFFIX}"
    )
