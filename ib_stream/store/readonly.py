"""Read-only access to a data root another process may be writing (analysts, the CLI).

The hot tier is read from the buffer segments not yet archived, at each query; cached results
are keyed by the catalog's data version and the sizes of those segments, so they never go stale.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import pyarrow as pa

from ib_stream.clock import SystemClock
from ib_stream.domain import StreamKey
from ib_stream.errors import StorageError
from ib_stream.settings import StorageConfig, load_settings
from ib_stream.store.cache import ChangeTracker, QueryCache
from ib_stream.store.hotcache import HotSnapshot, HotStream
from ib_stream.store.index import PartitionIndex
from ib_stream.store.layout import Layout
from ib_stream.store.query import QueryEngine
from ib_stream.store.schema import read_segment_file, segment_last_seq


class DiskHot:
    """The unarchived buffer segments of a data root, read on demand."""

    def __init__(self, layout: Layout, index: PartitionIndex) -> None:
        self.layout = layout
        self.index = index

    def snapshot(self, stream: StreamKey) -> HotSnapshot:
        archived = self.index.archived_seqs().get(stream, 0)
        hot = HotStream(stream.tick_type, archived + 1)
        for segment in self.layout.segments(stream):
            if segment_last_seq(segment.path, stream.tick_type) <= archived:
                continue
            table, _ = read_segment_file(segment.path, stream.tick_type)
            seq = table.column("seq").to_numpy()
            hot.add_table(table.filter(pa.array(seq > archived)))
        return hot.snapshot()

    def token(self, streams: Sequence[StreamKey]) -> Hashable:
        sizes = tuple((str(s.path), s.path.stat().st_size) for stream in streams for s in self.layout.segments(stream))
        return (self.index.data_version(), sizes)


def open_readonly_engine(config: StorageConfig | None = None) -> QueryEngine:
    """Open the data root of `config` (default: the loaded settings) for queries only."""
    config = config or load_settings().storage
    layout = Layout.of(config)
    if not layout.index_file.is_file():
        raise StorageError(
            f"no catalog at {layout.index_file}: is the data root {layout.data_root} right, and has data been stored? "
            "Start the service (`make run`) or name the data root: StorageQuery(config=StorageConfig(data_root=...)) "
            "or IB_STREAM_STORAGE__DATA_ROOT",
            details={"path": str(layout.index_file)},
        )
    index = PartitionIndex(layout.index_file, readonly=True)
    clock = SystemClock()
    cache = QueryCache(
        config.query_cache_size,
        config.query_cache_ttl_seconds,
        ChangeTracker(),
        clock,
        int(config.query_cache_max_mb * 2**20),
    )
    return QueryEngine(layout, index, DiskHot(layout, index), cache, clock)
