"""Child process of the crash test: write to a store as fast as it can until it is killed (`kill -9`).

    python -m tests.integration.crash_child <data_root> <ack_file> <seed> [archive|compact]

It opens a `TickStore` on `data_root` with a `ManualClock` that it advances itself by 20 s per
iteration, so 1-minute segments rotate and seal, hours close and archival, compaction, retention
and maintenance always have work. Three threads run at once:

- main: appends a batch to each of 2-3 streams per iteration (submitted together, so group commit
  merges them) and, once they are acknowledged (durable), records `A <stream> <first> <last>` per
  batch in the ack file, followed by `C <ns>`, the next clock value, before the store can see it
  (flushed and fsynced), so the parent knows what was acknowledged and the latest time the store saw;
- jobs: runs archival, compaction, retention and maintenance in a loop;
- reader: queries every stream whole, again and again, and exits with status 3 if a tick is ever
  missing or duplicated (exactly-once at every instant, during all the jobs).

Every tick's values are a pure function of (seed, stream, seq) (`tick_for`), so the parent can check
each stored tick, acknowledged or not. Phase markers `M <thread> B|E <phase> [<work>] <time>` go to
stdout so the parent can aim a kill at a phase and tell where it landed; with `archive` or `compact`
as fourth argument, that job also pauses 30 ms between writing its files and committing them to the
catalog, after a `M jobs P <phase>-commit` marker (see `_stretch_commit`).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from ib_stream.clock import NS_PER_SECOND, ManualClock, to_ns
from ib_stream.domain import StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import PartitionIndex, TickStore

HOUR_NS = 3600 * NS_PER_SECOND
CLOCK_STEP_SECONDS = 20
STRETCH_SECONDS = 0.03
VIOLATION_EXIT = 3
ERROR_EXIT = 4
_EXCHANGES = ("NASDAQ", "ARCA", "IEX", "", "ünï")
_ALL_STREAMS = (
    StreamKey(265598, TickType.BID_ASK),
    StreamKey(265598, TickType.LAST),
    StreamKey(8314, TickType.LAST),
)


# ---- what parent and child agree on, all derived from the seed ------------------------------------------------------
def child_config(data_root: Path, seed: int) -> StorageConfig:
    """The store settings of a run: 1-minute segments, jobs with no delays; the fsync interval varies."""
    rng = random.Random(f"config/{seed}")
    return StorageConfig(
        data_root=data_root,
        buffer_rotation_minutes=1,
        fsync_interval_ms=rng.choice((0, 5, 50)),
        buffer_duration_minutes=rng.choice((1, 120)),
        buffer_retention_hours=0.05,  # archived segments are deleted 3 minutes (clock) after they close
        compaction_delay_seconds=0,
        retired_file_grace_seconds=0,
    )


def child_streams(seed: int) -> tuple[StreamKey, ...]:
    """The 2 or 3 streams a run writes to."""
    return _ALL_STREAMS[: random.Random(f"streams/{seed}").choice((2, 3))]


def clock_start(seed: int) -> int:
    """Where the child's clock starts (a seed-dependent offset, so segment and hour edges fall differently).

    It is far behind the wall clock, as in replays: nothing in the store may mix the two (with readers
    stamped by wall time, compaction once deleted files under the reader thread here).
    """
    offset = random.Random(f"clock/{seed}").randrange(3600) * NS_PER_SECOND
    return to_ns(datetime(2025, 1, 10, 14, 0, tzinfo=UTC)) + offset


def source_of(stream_index: int) -> str:
    return f"crash{stream_index}"


def tick_for(seed: int, stream: StreamKey, stream_index: int, seq: int) -> dict[str, Any]:
    """The tick with this seq: event times rise one second per tick (pairs tie) and one in ten is hours late."""
    digest = hashlib.blake2b(f"{seed}/{stream_index}/{seq}".encode(), digest_size=16).digest()
    a, b = int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")
    ts = clock_start(seed) + (seq - seq % 2) * NS_PER_SECOND
    if a % 10 == 0:
        ts -= (1 + b % 3) * HOUR_NS + (b % 997) * NS_PER_SECOND
    if stream.tick_type == TickType.BID_ASK:
        bid = (a % 100_000) / 100
        return {
            "ts": ts,
            "bid_price": bid,
            "bid_size": float(b % 1000),
            "ask_price": bid + 0.01 * (1 + a % 3),
            "ask_size": float((b >> 10) % 1000),
            "bid_past_low": bool(a & 1 << 20),
            "ask_past_high": bool(a & 1 << 21),
        }
    return {
        "ts": ts,
        "price": a / 2**64 * 1000,
        "size": float(1 + b % 500),
        "exchange": _EXCHANGES[b % len(_EXCHANGES)],
        "conditions": "" if a & 1 << 30 else "@ T",
        "past_limit": bool(a & 1 << 31),
        "unreported": False,
        "side": (1, -1, None)[a % 3],
    }


# ---- the child ----------------------------------------------------------------------------------------------------
def _marker(thread: str, edge: str, phase: str, work: str = "") -> None:
    os.write(1, f"M {thread} {edge} {phase} {work} {time.monotonic():.4f}\n".encode())


def _record(ack: IO[str], lines: list[str]) -> None:
    ack.write("".join(line + "\n" for line in lines))
    ack.flush()
    os.fsync(ack.fileno())


def _fatal_on_error(target: Callable[..., None]) -> Callable[..., None]:
    """A thread body that ends the process (status 4) on any exception instead of dying quietly."""

    def run(*args: Any) -> None:
        try:
            target(*args)
        except BaseException:
            os.write(2, f"ERROR in thread {threading.current_thread().name}:\n{traceback.format_exc()}".encode())
            os.write(1, b"ERROR\n")
            os._exit(ERROR_EXIT)

    return run


def _jobs(store: TickStore, stop: threading.Event) -> None:
    while not stop.is_set():
        pending = len(store.archiver.pending_segments())
        _marker("jobs", "B", "archive", f"{pending}")
        store.run_archival()
        _marker("jobs", "E", "archive")
        partition_ns = store.layout.partition_ns
        work = len(store.index.partitions_to_compact(store.clock.now_ns(), partition_ns))
        _marker("jobs", "B", "compact", f"{work}")
        store.run_compaction()
        _marker("jobs", "E", "compact")
        _marker("jobs", "B", "retention")
        store.run_retention()
        _marker("jobs", "E", "retention")
        _marker("jobs", "B", "maintenance")
        store.run_maintenance()
        _marker("jobs", "E", "maintenance")
        time.sleep(0.002)


def _reader(
    store: TickStore, streams: tuple[StreamKey, ...], acked: dict[StreamKey, int], stop: threading.Event
) -> None:
    while not stop.is_set():
        for stream in streams:
            floor = acked[stream]
            seq = store.engine.read_stream(stream, 0, 2**62, columns=["ts", "seq"]).column("seq").to_numpy()
            seq = np.sort(seq)
            top = int(seq[-1]) if len(seq) else 0
            if top < floor or not np.array_equal(seq, np.arange(1, top + 1)):
                missing = sorted(set(range(1, max(top, floor) + 1)) - set(seq.tolist()))[:10]
                duplicated = np.unique(seq[1:][seq[1:] == seq[:-1]]).tolist()[:10]
                os.write(
                    1, f"VIOLATION {stream} acked {floor} rows {len(seq)} missing {missing} dup {duplicated}\n".encode()
                )
                os._exit(VIOLATION_EXIT)
        time.sleep(0.02)


def _stretch_commit(phase: str) -> None:
    """Hold archival (`archive`) or compaction (`compact`) for a moment between renaming its new files into
    place and committing them to the catalog, announced by a `P` marker, so the parent can aim a kill at
    that moment (or just after the commit). Only the timing changes."""
    name = {"archive": "register", "compact": "replace"}[phase]
    original = getattr(PartitionIndex, name)

    def stretched(self: PartitionIndex, *args: Any, **kwargs: Any) -> Any:
        _marker("jobs", "P", f"{phase}-commit")
        time.sleep(STRETCH_SECONDS)
        return original(self, *args, **kwargs)

    setattr(PartitionIndex, name, stretched)


def main(argv: list[str]) -> None:
    data_root, ack_path, seed = Path(argv[0]), Path(argv[1]), int(argv[2])
    if len(argv) > 3 and argv[3] in ("archive", "compact"):
        _stretch_commit(argv[3])
    streams = child_streams(seed)
    clock = ManualClock(clock_start(seed))
    store = TickStore(child_config(data_root, seed), clock).open()
    rng = random.Random(f"child/{seed}/{os.getpid()}")
    acked = {s: store.buffer.next_seq(s) - 1 for s in streams}
    stop = threading.Event()
    threading.Thread(target=_fatal_on_error(_jobs), args=(store, stop), daemon=True, name="jobs").start()
    reader = _fatal_on_error(_reader)
    threading.Thread(target=reader, args=(store, streams, acked, stop), daemon=True, name="reader").start()
    segment_ns = store.layout.segment_ns
    with open(ack_path, "a") as ack:
        now = clock.now_ns() + CLOCK_STEP_SECONDS * NS_PER_SECOND
        _record(ack, [f"C {now}"])
        os.write(1, b"ready\n")
        while True:
            clock.set(now)
            rotates = now % segment_ns < CLOCK_STEP_SECONDS * NS_PER_SECOND
            _marker("main", "B", "append", "rotate" if rotates else "")
            batches = []
            for index, stream in enumerate(streams):
                if rng.random() < 0.2:
                    continue
                first = store.buffer.next_seq(stream)
                # Now and then a batch bigger than the writer's 8 KiB file buffer, which it writes in pieces.
                count = rng.randint(1, 40) if rng.random() < 0.9 else rng.randint(100, 400)
                ticks = [tick_for(seed, stream, index, seq) for seq in range(first, first + count)]
                future = store.buffer.submit(stream.contract_id, stream.tick_type, ticks, source=source_of(index))
                batches.append((index, stream, first, future))
            lines = []
            for index, stream, first, future in batches:
                result = future.result()  # acknowledged: durable
                if result.first_seq != first:
                    os.write(1, f"VIOLATION {stream} expected seq {first}, got {result.first_seq}\n".encode())
                    os._exit(VIOLATION_EXIT)
                lines.append(f"A {index} {result.first_seq} {result.last_seq}")
                acked[stream] = result.last_seq
            _marker("main", "E", "append")
            # The acks, and the next clock value before the store can see it, in one fsync.
            now = clock.now_ns() + CLOCK_STEP_SECONDS * NS_PER_SECOND
            _record(ack, [*lines, f"C {now}"])
            time.sleep(rng.uniform(0.005, 0.03))


if __name__ == "__main__":
    main(sys.argv[1:])
