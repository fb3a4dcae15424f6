"""Provenance of a data root: which contracts hold ticks that did not come from the simulator.

The simulator must never write into a stream of real data (broker, imported or ingested ticks), and source
`auto` must never run it in a data root that holds any. The store notes every contract that receives a tick
from another source in `provenance.json` in the data root (`Layout.provenance_file`), written atomically and
*before* the first such tick is appended, so a crash cannot leave real ticks unnoted.

    provenance = Provenance.open(layout, index, buffer)   # reads the file (or, once, scans an older data root)
    provenance.note(265598, "ib_tbt")                    # the store calls it before appending
    provenance.real_contracts()                          # {265598: ("ib_tbt",)}

A data root written before this file existed is scanned once when it is first opened: per contract, the hot
tier's `source` column and the archive files newest first (the Parquet statistics of `source`; the column
itself where a file has none), stopping at the first non-simulated tick.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import pyarrow.compute as pc
import pyarrow.parquet as pq

from ib_stream.domain import SIM_SOURCE, StreamKey
from ib_stream.errors import StorageError
from ib_stream.store.buffer import TickBuffer
from ib_stream.store.index import PartitionIndex
from ib_stream.store.layout import Layout, fsync_dir, temp_path

log = logging.getLogger(__name__)
VERSION: Final = 1


class Provenance:
    """The contracts of one data root that hold non-simulated ticks, and the sources seen (thread-safe)."""

    def __init__(self, path: Path, contracts: dict[int, frozenset[str]] | None = None) -> None:
        self.path = path
        self._contracts: dict[int, frozenset[str]] = dict(contracts or {})
        self._lock = threading.Lock()

    @classmethod
    def open(cls, layout: Layout, index: PartitionIndex, buffer: TickBuffer) -> Provenance:
        """Read the data root's provenance file; without one, scan the data root once and write it."""
        path = layout.provenance_file
        if path.is_file():
            return cls(path, _read(path))
        provenance = cls(path, _scan(layout, index, buffer))
        provenance._write()
        if provenance._contracts:
            log.info("data root %s holds non-simulated ticks: %s", layout.data_root, provenance.describe())
        return provenance

    # ---- reading ----------------------------------------------------------------------------------------
    def real_contracts(self) -> dict[int, tuple[str, ...]]:
        """contract_id -> the non-simulated sources seen in its streams (sorted)."""
        return {cid: tuple(sorted(sources)) for cid, sources in sorted(self._contracts.items())}

    def holds_real(self, contract_id: int) -> bool:
        """Whether any stream of the contract holds a non-simulated tick."""
        return contract_id in self._contracts

    @property
    def holds_real_data(self) -> bool:
        """Whether any contract of the data root holds a non-simulated tick."""
        return bool(self._contracts)

    def describe(self) -> str:
        """`265598 (ib_tbt, import), 495512563 (api)` — for logs and /health."""
        return ", ".join(f"{cid} ({', '.join(sources)})" for cid, sources in self.real_contracts().items())

    # ---- noting -----------------------------------------------------------------------------------------
    def is_new(self, contract_id: object, sources: Iterable[str]) -> bool:
        """Whether appending ticks of these sources to the contract would add to the provenance (cheap). A contract
        id that is no integer is not: the buffer refuses it."""
        cid = _contract_id(contract_id)
        if cid is None:
            return False
        known = self._contracts.get(cid)
        return any(s != SIM_SOURCE and (known is None or s not in known) for s in sources)

    def note(self, contract_id: object, sources: Iterable[str]) -> None:
        """Record that the contract receives ticks of these sources; durable when this returns (blocking)."""
        real = {s for s in sources if s != SIM_SOURCE}
        contract_id = _contract_id(contract_id)
        if contract_id is None:
            return
        with self._lock:
            known = self._contracts.get(contract_id, frozenset())
            if real <= known:
                return
            self._contracts[contract_id] = known | real
            try:
                self._write()
            except BaseException:
                self._contracts[contract_id] = known
                raise

    def _write(self) -> None:
        body = {
            "version": VERSION,
            "about": "contracts of this data root holding ticks not from the simulator (ib-stream never simulates them)",
            "contracts": {str(cid): list(sources) for cid, sources in self.real_contracts().items()},
        }
        temp = temp_path(self.path)
        try:
            with temp.open("w") as handle:
                json.dump(body, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
            fsync_dir(self.path.parent)
        except OSError as e:
            raise StorageError(
                f"provenance file {self.path} cannot be written: {e}", details={"path": str(self.path)}
            ) from e


def batch_sources(source: str, ticks: Iterable[object]) -> set[str]:
    """The sources a batch stores: its own, and any a tick overrides it with (only looked at for a simulated
    batch — any other batch is real data already)."""
    if source != SIM_SOURCE:
        return {source}
    found = {source}
    for tick in ticks:
        if isinstance(tick, dict):
            override = tick.get("source")
            if isinstance(override, str) and override:
                found.add(override)
    return found


def _contract_id(value: object) -> int | None:
    # As the buffer reads a contract id (an int, or text of one); None where it refuses it.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value))
    except ValueError:
        return None


def _read(path: Path) -> dict[int, frozenset[str]]:
    try:
        body = json.loads(path.read_text())
        return {int(cid): frozenset(str(s) for s in sources) for cid, sources in body["contracts"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise StorageError(
            f"provenance file {path} is unreadable: {e} (delete it to have the data root scanned again)",
            details={"path": str(path)},
        ) from e


def _scan(layout: Layout, index: PartitionIndex, buffer: TickBuffer) -> dict[int, frozenset[str]]:
    """Per contract, the non-simulated sources found first: hot tier, then archive files newest first."""
    streams = sorted(set(index.streams()) | set(buffer.streams()))
    found: dict[int, frozenset[str]] = {}
    for stream in streams:
        if stream.contract_id in found:
            continue
        sources = _hot_sources(buffer, stream) or _archive_sources(layout, index, stream)
        if sources:
            found[stream.contract_id] = frozenset(sources)
    return found


def _hot_sources(buffer: TickBuffer, stream: StreamKey) -> set[str]:
    hot = buffer.hot(stream)
    out: set[str] = set()
    for chunk in hot.snapshot().chunks if hot is not None else ():
        out.update(str(s) for s in pc.unique(chunk.table.column("source")).to_pylist() if s is not None)
    return out - {SIM_SOURCE}


def _archive_sources(layout: Layout, index: PartitionIndex, stream: StreamKey) -> set[str]:
    for file in sorted(index.files(stream), key=lambda f: (f.partition_start, f.first_seq), reverse=True):
        path = layout.absolute(file.file_path)
        try:
            sources = _file_sources(path)
        except (OSError, ValueError) as e:  # an unreadable file: `verify` reports it; it cannot prove anything here
            log.warning("provenance scan: %s is unreadable: %s", path, e)
            continue
        if sources - {SIM_SOURCE}:
            return sources - {SIM_SOURCE}
    return set()


def _file_sources(path: Path) -> set[str]:
    """The `source` values of a Parquet file: from the row-group statistics when they prove them, else read."""
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if "source" not in names:
        return set()
    column = names.index("source")
    out: set[str] = set()
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            table = pq.read_table(path, columns=["source"])
            return {str(s) for s in pc.unique(table.column("source")).to_pylist() if s is not None}
        low, high = _text(stats.min), _text(stats.max)
        out.update((low, high))
    return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
