"""ArcticDB (LMDB) peer of `store_bench.py`: the same operations on the same synthetic day, as JSON.

ArcticDB needs pandas < 3, so this runs in its own venv (bench/.bench-venv), started by store_bench.py:

    bench/.bench-venv/bin/python bench/arctic_peer.py <workdir>/peer/params.json

`params.json` names a directory with `bid_ask.parquet` and `last.parquet` (the day written by the main
script: ts int64 ns UTC plus the stream columns) and the query windows. One JSON document goes to stdout
(`rows` for the table, `summary` for the ratios), progress to stderr.

Operations, mirroring the main script:
* durable ingest: the day's batches (1000 dicts, ordered by the arrival of their last tick, both
  streams) -> `pd.DataFrame(dicts)` -> `lib.append` (an LMDB commit per append), capped in time;
* the whole day written with one `lib.write` per stream (ArcticDB's "at rest" form) and its bytes;
* reads from that: 30-min range, full day, day of 1-minute bars (`QueryBuilder.resample`), last 5 min;
* restart-to-ready: a new `Arctic` instance, get the library, read the last 5 minutes.
Sizes are float64 as in ib_stream's schema; the index is a naive-UTC DatetimeIndex.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import arcticdb as adb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from timing import timed

STREAMS = ("bid_ask", "last")
SIZE_COLUMNS = ("bid_size", "ask_size", "size")
T_START = time.perf_counter()


def trade_bars_query() -> adb.QueryBuilder:
    """1-minute bars of trades: OHLC, volume, notional (for the VWAP) and count."""
    q = adb.QueryBuilder()
    q = q.apply("notional", q["price"] * q["size"])
    return q.resample("1min").agg(
        {
            "open": ("price", "first"),
            "high": ("price", "max"),
            "low": ("price", "min"),
            "close": ("price", "last"),
            "volume": ("size", "sum"),
            "notional": ("notional", "sum"),
            "trade_count": ("price", "count"),
        }
    )


def log(msg: str) -> None:
    print(f"[peer {time.perf_counter() - T_START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def allocated_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def load(directory: Path) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in STREAMS:
        table = pq.read_table(directory / f"{s}.parquet")
        cols = {}
        for name in table.column_names:
            v = table.column(name).to_numpy(zero_copy_only=False)
            cols[name] = v.astype(np.float64) if name in SIZE_COLUMNS else v
        out[s] = cols
    return out


def frame(cols: dict[str, np.ndarray], start: int = 0, stop: int | None = None) -> pd.DataFrame:
    index = pd.DatetimeIndex(cols["ts"][start:stop].view("datetime64[ns]"), name="ts")
    return pd.DataFrame({k: v[start:stop] for k, v in cols.items() if k != "ts"}, index=index)


def dicts(cols: dict[str, np.ndarray], start: int, stop: int) -> list[dict[str, Any]]:
    names = list(cols)
    values = [cols[n][start:stop].tolist() for n in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def ingest(ac: adb.Arctic, data: dict[str, dict[str, np.ndarray]], batch: int, cap_s: float) -> dict[str, Any]:
    """Batches of dicts, in arrival order across both streams, one append (one LMDB commit) each."""
    lib = ac.get_library("ingest", create_if_missing=True)
    order = []
    for rank, s in enumerate(STREAMS):
        n = data[s]["ts"].size
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            order.append((int(data[s]["ts"][stop - 1]), rank, s, start, stop))
    order.sort()
    written: set[str] = set()
    ticks = batches = 0
    spent = 0.0
    for _, _, s, start, stop in order:
        ticks_in = dicts(data[s], start, stop)  # the feed handler's dicts: not timed, as in ib_stream
        started = time.perf_counter()
        df = pd.DataFrame(ticks_in)
        df.index = pd.DatetimeIndex(df.pop("ts").to_numpy().view("datetime64[ns]"), name="ts")
        if s in written:
            lib.append(s, df)
        else:
            lib.write(s, df)
            written.add(s)
        spent += time.perf_counter() - started
        ticks += stop - start
        batches += 1
        if spent > cap_s:
            break
    sizes = lib.admin_tools().get_sizes()
    key_bytes = int(sum(v.bytes_compressed for v in sizes.values()))
    return {
        "name": f"durable ingest: pd.DataFrame({batch} dicts) + lib.append per batch (capped at {cap_s:g}s)",
        "ticks": ticks,
        "batches": batches,
        "seconds": spent,
        "ticks_per_s": ticks / spent,
        "bytes_per_tick": key_bytes / ticks,
        "completed": batches == len(order),
    }


def main() -> int:
    params = json.loads(Path(sys.argv[1]).read_text())
    reps, warmup = params["reps"], params["warmup"]
    work = Path(params["workdir"])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    uri = f"lmdb://{work}?map_size=32GB"
    data = load(Path(params["input"]))
    n = {s: int(data[s]["ts"].size) for s in STREAMS}
    total = sum(n.values())
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"arcticdb": adb.__version__, "pandas": pd.__version__}

    def add(name: str, times: list[float] | None = None, **metrics: Any) -> None:
        row = {"name": name, **metrics}
        if times:
            row["times_ms"] = [round(t * 1e3, 3) for t in times]
        rows.append(row)
        log(f"{name} | " + ", ".join(f"{k}={v}" for k, v in metrics.items()))

    ac = adb.Arctic(uri)
    row = ingest(ac, data, params["batch"], params["ingest_seconds"])
    add(row.pop("name"), **row)
    summary["ingest_ticks_per_s"] = row["ticks_per_s"]
    ac.delete_library("ingest")

    frames = {s: frame(data[s]) for s in STREAMS}
    write_s = 0.0
    key_bytes = alloc = 0
    for s in STREAMS:
        ac.create_library(f"day_{s}")
        lib = ac[f"day_{s}"]
        started = time.perf_counter()
        lib.write(s, frames[s])
        secs = time.perf_counter() - started
        write_s += secs
        kb = int(sum(v.bytes_compressed for v in lib.admin_tools().get_sizes().values()))
        key_bytes += kb
        al = allocated_bytes(work / f"day_{s}") if (work / f"day_{s}").is_dir() else 0
        alloc += al
        add(
            f"{s}: lib.write of the whole day",
            ticks=n[s],
            seconds=secs,
            ticks_per_s=n[s] / secs,
            bytes_per_tick=kb / n[s],
            lmdb_allocated_per_tick=al / n[s],
        )
    summary["write_day_ticks_per_s"] = total / write_s
    summary["bytes_per_tick"] = key_bytes / total
    add(
        "both streams: whole day at rest (compressed key bytes)",
        bytes_per_tick=key_bytes / total,
        lmdb_allocated_per_tick=(alloc / total) if alloc else None,
    )

    def window(lo: int, hi: int) -> tuple[pd.Timestamp, pd.Timestamp]:
        return pd.Timestamp(lo), pd.Timestamp(hi - 1)  # date_range is inclusive at both ends

    def count(s: str, lo: int, hi: int) -> int:
        ts = data[s]["ts"]
        return int(np.searchsorted(ts, hi) - np.searchsorted(ts, lo))

    lo30, hi30 = params["range30"]
    rlo, rhi = params["recent"]
    for s in STREAMS:
        lib = ac[f"day_{s}"]
        med, times, out = timed(lambda lib=lib, s=s: lib.read(s, date_range=window(lo30, hi30)).data, reps, warmup)
        add(
            f"{s}: 30-min range 11:45-12:15 NY (date_range)",
            times,
            rows=len(out),
            median_ms=med * 1e3,
            verified=len(out) == count(s, lo30, hi30),
        )
        summary[f"{s}_range_30min_ms"] = med * 1e3
        med, times, out = timed(lambda lib=lib, s=s: lib.read(s).data, reps, warmup)
        add(f"{s}: full day", times, rows=len(out), median_ms=med * 1e3, verified=len(out) == n[s])
        summary[f"{s}_full_day_ms"] = med * 1e3
        del out
        if s == "last":

            def bars(lib: Any = lib, s: str = s) -> pd.DataFrame:
                df = lib.read(s, query_builder=trade_bars_query()).data
                df["vwap"] = df["notional"] / df["volume"]
                return df

            what = "OHLC, volume, VWAP, count"
            counts = "trade_count"
        else:

            def bars(lib: Any = lib, s: str = s) -> pd.DataFrame:
                q = adb.QueryBuilder()
                q = q.apply("obi", (q["bid_size"] - q["ask_size"]) / (q["bid_size"] + q["ask_size"]))
                q = q.resample("1min").agg(
                    {
                        "bid_price": ("bid_price", "last"),
                        "ask_price": ("ask_price", "last"),
                        "bid_size": ("bid_size", "last"),
                        "ask_size": ("ask_size", "last"),
                        "obi_open": ("obi", "first"),
                        "obi_high": ("obi", "max"),
                        "obi_low": ("obi", "min"),
                        "obi_close": ("obi", "last"),
                        "quote_count": ("obi", "count"),
                    }
                )
                return lib.read(s, query_builder=q).data

            what = "last quote, OBI OHLC, count"
            counts = "quote_count"
        med, times, out = timed(bars, reps, warmup)
        add(
            f"{s}: full day of 1-minute bars via QueryBuilder.resample ({what})",
            times,
            rows=len(out),
            median_ms=med * 1e3,
            verified=int(out[counts].sum()) == n[s],
        )
        summary[f"{s}_bars_1m_ms"] = med * 1e3
        med, times, out = timed(lambda lib=lib, s=s: lib.read(s, date_range=window(rlo, rhi)).data, reps, warmup)
        add(
            f"{s}: recent 5 min (date_range)",
            times,
            rows=len(out),
            median_ms=med * 1e3,
            verified=len(out) == count(s, rlo, rhi),
        )
        summary[f"{s}_recent_5min_ms"] = med * 1e3

    del ac
    started = time.perf_counter()
    ac2 = adb.Arctic(uri)
    out = ac2["day_bid_ask"].read("bid_ask", date_range=window(rlo, rhi)).data
    ready = time.perf_counter() - started
    add(
        "restart-to-ready: new Arctic(uri) + read last 5 min of bid_ask (same process)",
        ready_s=ready,
        verified=len(out) == count("bid_ask", rlo, rhi),
    )
    summary["restart_to_ready_s"] = ready
    json.dump({"rows": rows, "summary": summary}, sys.stdout)
    del ac2
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
