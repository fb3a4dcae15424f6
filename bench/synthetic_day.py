"""The synthetic trading day shared by every store benchmark (a pure function of ticks, seed and date).

This is a re-implementation of the generator in the baseline harness (`/work/shared/bench/baseline.py`,
described in its README under "The synthetic day"): the random draws happen in the same order, so for the
same `(n_total, seed, date)` the arrays are identical and our figures compare with the baseline's.

One contract on one trading day, 09:30-16:00 America/New_York, timestamps int64 ns UTC on a 1 µs grid,
strictly increasing per stream. 80 % of the ticks are `bid_ask` quotes, 20 % `last` trades.

It depends on numpy only (plus pyarrow for `to_arrow`), so both the project venv and the ArcticDB peer
venv can import it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

NS = 1_000_000_000
NY = ZoneInfo("America/New_York")
QUOTE_COLUMNS = ("ts", "bid_price", "bid_size", "ask_price", "ask_size")
TRADE_COLUMNS = ("ts", "price", "size", "exchange", "conditions")
EXCHANGES = np.array(["NASDAQ", "NYSE", "ARCA", "BATS", "EDGX", "IEX", "MEMX", "BYX", "FINRA"], dtype=object)
EXCHANGE_P = [0.20, 0.10, 0.10, 0.08, 0.08, 0.04, 0.05, 0.03, 0.32]
CONDITIONS = np.array(["", "I", "F", "F I"], dtype=object)


@dataclass(frozen=True)
class SyntheticDay:
    """The generated day: one dict of numpy columns per stream plus the session bounds (ns UTC)."""

    quotes: dict[str, np.ndarray]
    trades: dict[str, np.ndarray]
    t0: int
    t1: int

    @property
    def n_quotes(self) -> int:
        return int(self.quotes["ts"].size)

    @property
    def n_trades(self) -> int:
        return int(self.trades["ts"].size)

    @property
    def n_total(self) -> int:
        return self.n_quotes + self.n_trades

    def stream(self, name: str) -> dict[str, np.ndarray]:
        """The columns of `bid_ask` or `last`."""
        return self.quotes if name == "bid_ask" else self.trades


def day_bounds(date: str) -> tuple[int, int]:
    """09:30 and 16:00 New York on `date` as int ns UTC."""
    d = dt.date.fromisoformat(date)
    open_ = dt.datetime(d.year, d.month, d.day, 9, 30, tzinfo=NY)
    close = dt.datetime(d.year, d.month, d.day, 16, 0, tzinfo=NY)
    return int(open_.timestamp()) * NS, int(close.timestamp()) * NS


def ny_time_ns(date: str, hour: int, minute: int) -> int:
    """A wall-clock time in New York on `date` as int ns UTC."""
    d = dt.date.fromisoformat(date)
    return int(dt.datetime(d.year, d.month, d.day, hour, minute, tzinfo=NY).timestamp()) * NS


def intensity_per_second(rng: np.random.Generator, day_s: int) -> np.ndarray:
    """Intraday U shape x AR(1) log-normal activity x 15 news bursts."""
    t = np.arange(day_s, dtype=np.float64)
    u = 1.0 + 2.5 * np.exp(-t / 1200.0) + 1.5 * np.exp(-(day_s - 1 - t) / 1500.0)
    eps = rng.normal(0.0, 0.30, day_s)
    x = np.empty(day_s)
    acc = 0.0
    for i in range(day_s):  # 23,400 iterations, negligible
        acc = 0.95 * acc + eps[i]
        x[i] = acc
    lam = u * np.exp(x)
    for _ in range(15):
        start = int(rng.integers(0, day_s - 60))
        length = int(rng.integers(3, 45))
        lam[start : start + length] *= rng.uniform(4.0, 15.0)
    return lam


def arrival_times(rng: np.random.Generator, n: int, lam_s: np.ndarray, t0_ns: int) -> np.ndarray:
    """n strictly increasing int64 ns timestamps on a 1 µs grid, bursty at the 10 ms scale."""
    bins_per_s = 100
    lam = np.repeat(lam_s, bins_per_s) * rng.lognormal(0.0, 1.0, lam_s.size * bins_per_s)
    cdf = np.cumsum(lam)
    u = np.sort(rng.random(n)) * cdf[-1]
    b = np.searchsorted(cdf, u, side="right").astype(np.int64)
    np.minimum(b, lam.size - 1, out=b)
    ts_us = b * 10_000 + rng.integers(0, 10_000, n)
    ts_us.sort()
    ar = np.arange(n, dtype=np.int64)
    ts_us = np.maximum.accumulate(ts_us - ar) + ar  # strictly increasing at 1 µs
    return t0_ns + ts_us * 1000


def quote_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    lots = np.minimum(np.floor(rng.pareto(1.5, n)) + 1, 20) * 100
    odd = np.minimum(np.floor(rng.pareto(1.1, n) * 30) + 1, 2000)
    sizes = np.where(rng.random(n) < 0.7, lots, odd)
    return np.clip(sizes, 1, 2000).astype(np.int64)


def trade_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    k = rng.random(n)
    odd = np.minimum(np.floor(rng.pareto(1.2, n) * 8) + 1, 99)
    round_lots = np.minimum(np.floor(rng.pareto(1.5, n)) + 1, 20) * 100
    blocks = np.floor(rng.pareto(0.9, n) * 300) + 100
    sizes = np.where(k < 0.5, odd, np.where(k < 0.95, round_lots, blocks))
    return np.clip(sizes, 1, 2000).astype(np.int64)


def generate(n_total: int = 5_000_000, seed: int = 20240315, date: str = "2024-03-15") -> SyntheticDay:
    """Build the day (same random draws, in the same order, as the baseline harness)."""
    rng = np.random.default_rng(seed)
    t0, t1 = day_bounds(date)
    day_s = (t1 - t0) // NS
    n_q = round(n_total * 0.8)
    n_t = n_total - n_q
    lam = intensity_per_second(rng, day_s)

    q_ts = arrival_times(rng, n_q, lam, t0)
    p_move = min(0.3, 150.0**2 / n_q)  # about 1.50 USD daily std of the mid, independent of n
    r = rng.random(n_q)
    steps = np.where(r < p_move / 2, -1, np.where(r < p_move, 1, 0)).astype(np.int64)
    steps[0] = 0
    bid_t = 20000 + np.cumsum(steps)
    change = rng.random(n_q) < 0.01
    change[0] = True
    spread_vals = rng.choice(np.array([1, 2, 3]), p=[0.8, 0.15, 0.05], size=n_q)
    idx = np.where(change, np.arange(n_q), 0)
    np.maximum.accumulate(idx, out=idx)
    ask_t = bid_t + spread_vals[idx]
    quotes = {
        "ts": q_ts,
        "bid_price": bid_t / 100.0,
        "bid_size": quote_sizes(rng, n_q),
        "ask_price": ask_t / 100.0,
        "ask_size": quote_sizes(rng, n_q),
    }

    t_ts = arrival_times(rng, n_t, lam, t0)
    qi = np.searchsorted(q_ts, t_ts, side="right") - 1
    np.clip(qi, 0, None, out=qi)
    flips = rng.random(n_t) < 0.35
    side = np.where(np.cumsum(flips) % 2 == 0, 1, -1)
    tb, ta = bid_t[qi], ask_t[qi]
    px = np.where(side > 0, ta, tb)
    inside = (ta - tb >= 2) & (rng.random(n_t) < 0.3)
    px = np.where(inside, tb + 1, px)
    size = trade_sizes(rng, n_t)
    iso = rng.random(n_t) < 0.10
    cond_code = (size < 100).astype(np.int64) + 2 * iso.astype(np.int64)
    trades = {
        "ts": t_ts,
        "price": px / 100.0,
        "size": size,
        "exchange": EXCHANGES[rng.choice(len(EXCHANGES), p=EXCHANGE_P, size=n_t)],
        "conditions": CONDITIONS[cond_code],
    }
    return SyntheticDay(quotes, trades, t0, t1)


def tick_dicts(columns: dict[str, np.ndarray], start: int, stop: int) -> list[dict[str, Any]]:
    """Rows [start, stop) of a stream as the dicts a feed handler hands to the store (sizes as floats)."""
    names = list(columns)
    values = []
    for name in names:
        col = columns[name][start:stop]
        values.append(col.astype(np.float64).tolist() if name in ("size", "bid_size", "ask_size") else col.tolist())
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def to_arrow(columns: dict[str, np.ndarray]) -> Any:
    """The stream as a pyarrow table (ts int64 ns, strings as string)."""
    import pyarrow as pa

    arrays = [pa.array(v, type=pa.string()) if v.dtype == object else pa.array(v) for v in columns.values()]
    return pa.table(arrays, names=list(columns))
