"""The tiered tick store: JSONL buffer → Parquet archive → SQLite catalog, and range queries.

Public import path (a contract): `from ib_stream.storage import StorageQuery, MarketSessions, StorageConfig`
(`MarketSessions`: trading sessions from exchange calendars, see docs/concepts/sessions.md).
"""

from ib_stream.settings import StorageConfig
from ib_stream.storage.buffer import AppendResult, TickBuffer
from ib_stream.storage.index import PartitionIndex
from ib_stream.storage.query import QueryEngine, StorageQuery
from ib_stream.storage.sessions import MarketSessions
from ib_stream.storage.store import TickStore

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
