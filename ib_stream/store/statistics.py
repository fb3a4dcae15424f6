"""Daily statistics per stream (`data_statistics`), recomputed from the archive files of a date."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import PRICE_FIELDS, StreamKey, TickType
from ib_stream.store.index import ArchiveFile, DailyStatistics, PartitionIndex
from ib_stream.store.layout import DAY_NS, Layout
from ib_stream.store.schema import read_parquet


def date_of(ns: int) -> str:
    """The UTC date of a time, `YYYY-MM-DD`."""
    return datetime.fromtimestamp(ns // NS_PER_SECOND, tz=UTC).strftime("%Y-%m-%d")


class StatisticsUpdater:
    """Keeps `data_statistics` equal to what the catalogued files of each date hold."""

    def __init__(self, layout: Layout, index: PartitionIndex) -> None:
        self.layout = layout
        self.index = index

    def refresh(self, touched: set[tuple[StreamKey, str]]) -> None:
        """Recompute the statistics of the given (stream, date) pairs."""
        rows: list[DailyStatistics] = []
        removed: list[tuple[int, str, str]] = []
        by_stream: dict[StreamKey, list[ArchiveFile]] = {}
        for stream, date in sorted(touched):
            day = int(datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()) * NS_PER_SECOND
            if stream not in by_stream:
                by_stream[stream] = self.index.files(stream)
            files = [f for f in by_stream[stream] if day <= f.partition_start < day + DAY_NS]
            if files:
                rows.append(self._day(stream, date, files))
            else:
                removed.append((stream.contract_id, stream.tick_type.value, date))
        if rows or removed:
            self.index.put_statistics(rows, removed)

    def refresh_all(self) -> None:
        """Recompute every date of every stream and drop rows of dates without files."""
        files = self.index.files()
        wanted = {(f.stream, date_of(f.partition_start)) for f in files}
        stale = {
            (StreamKey(s.contract_id, TickType(s.tick_type)), s.date)
            for s in self.index.statistics()
            if (StreamKey(s.contract_id, TickType(s.tick_type)), s.date) not in wanted
        }
        self.refresh(wanted | stale)

    def _day(self, stream: StreamKey, date: str, files: list[ArchiveFile]) -> DailyStatistics:
        price_cols = list(PRICE_FIELDS[stream.tick_type])
        is_trade = stream.tick_type in (TickType.LAST, TickType.ALL_LAST)
        columns = price_cols + (["size"] if is_trade else [])
        tables = [read_parquet(self.layout.absolute(f.file_path), stream.tick_type, columns=columns) for f in files]
        table = pa.concat_tables(tables)
        prices = np.concatenate([table.column(c).to_numpy() for c in price_cols])
        if stream.tick_type == TickType.BID_ASK:
            prices = prices[prices > 0]  # a zero bid/ask means "no quote on that side"
        volume = vwap = None
        if is_trade:
            size = table.column("size").to_numpy()
            volume = float(size.sum())
            vwap = float((table.column("price").to_numpy() * size).sum() / volume) if volume else None
        return DailyStatistics(
            contract_id=stream.contract_id,
            tick_type=stream.tick_type.value,
            date=date,
            total_ticks=table.num_rows,
            unique_prices=len(np.unique(prices)),
            total_volume=volume,
            vwap=vwap,
            high_price=float(prices.max()) if len(prices) else None,
            low_price=float(prices.min()) if len(prices) else None,
        )
