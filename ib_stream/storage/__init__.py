"""The public Python API of the tick store (a façade over the layers, at the top of the import graph).

`from ib_stream.storage import StorageQuery, MarketSessions, StorageConfig` is a contract users rely on:
`StorageQuery` answers range queries, order-flow bars and L2 books over a data root (see
docs/howto/query-from-python.md); `MarketSessions` gives trading sessions from exchange calendars (see
docs/concepts/sessions.md). The store's parts live in `ib_stream.store`, the order-flow service in
`ib_stream.orderflow`; nothing inside the package imports this module.
"""

from ib_stream.calendars import MarketSessions
from ib_stream.orderflow.query import StorageQuery
from ib_stream.settings import StorageConfig
from ib_stream.store.buffer import AppendResult, TickBuffer
from ib_stream.store.index import PartitionIndex
from ib_stream.store.query import QueryEngine
from ib_stream.store.tickstore import TickStore

__all__ = [
    "AppendResult",
    "MarketSessions",
    "PartitionIndex",
    "QueryEngine",
    "StorageConfig",
    "StorageQuery",
    "TickBuffer",
    "TickStore",
]
