"""Crash test: `kill -9` a writing store at random moments; recovery plus one re-run of the jobs loses nothing.

Each run starts `python -m tests.integration.crash_child <data_root> <ack_file> <seed> <target>`
(see that module: it appends to 2-3 streams with its own fast `ManualClock` while archival,
compaction, retention and maintenance run in a thread and a reader checks exactly-once
continuously), waits until it is writing, aims a SIGKILL at a phase with a random offset, and kills
it. The targets: any moment, an append, an append that rotates segments, archival or compaction
between writing their Parquet files and committing them to the catalog (the child pauses there for
30 ms when told to), retention / maintenance. Then, in this process:

1. (in every other run, first leave a torn last line in one segment, as a kill inside write() would)
   reopen the store at the child's last clock (recovery: torn lines truncated and counted, temp
   files removed): every acknowledged tick is there exactly once, seq is gap-free from 1 per
   stream, and every stored tick (acknowledged or not) holds exactly the values the child wrote
   for its seq;
2. let time pass and run archival, compaction and maintenance once (the repair-by-rerun step):
   nothing left to archive, one file per closed partition, the same ticks, and appending goes on
   at max seq + 1;
3. `verify` finds no mismatch between catalog and files; `rebuild` from the files alone gives
   back the same ticks, exactly once.

The normal suite runs one kill per target phase (about 20 s in all); `-m slow` runs 60 (2-3 minutes).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import TICK_FIELDS, StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import PartitionIndex, StorageQuery, TickStore
from ib_stream.store.repair import VerifyReport, rebuild, verify
from ib_stream.store.tickstore import make_layout
from tests.conftest import CONTRACT, T0_NS, trade
from tests.integration.crash_child import (
    ERROR_EXIT,
    VIOLATION_EXIT,
    child_config,
    child_streams,
    clock_start,
    source_of,
    tick_for,
)

REPO = Path(__file__).resolve().parents[2]
HOUR_NS = 3600 * NS_PER_SECOND
TARGETS = ("any", "append", "rotate", "archive", "compact", "maintenance")
# Marker lines (`M <thread> B <phase> [<work>] <time>`) that start each target phase.
_TARGET_MARKERS = {
    "append": re.compile(r"^M main B append "),
    "rotate": re.compile(r"^M main B append rotate "),
    "archive": re.compile(r"^M jobs P archive-commit "),
    "compact": re.compile(r"^M jobs P compact-commit "),
    "maintenance": re.compile(r"^M jobs B (retention|maintenance) "),
}
# How long after the start of the target phase the kill may land: about the phase's usual length, or
# for archive / compact a little longer than the child's 30 ms pause before the catalog commit (so the
# kill mostly lands before the commit, now and then during or just after it).
_OFFSET_SECONDS = {"append": 0.01, "rotate": 0.01, "archive": 0.033, "compact": 0.033, "maintenance": 0.005}
_READY_TIMEOUT = 60.0
_TARGET_TIMEOUT = 8.0


@dataclass(frozen=True, slots=True)
class Acks:
    """What the child recorded: its latest clock value and, per stream index, the highest acknowledged seq."""

    clock_ns: int
    top: dict[int, int]


@dataclass(frozen=True, slots=True)
class CrashOutcome:
    """One kill and what recovery found, for the run summary."""

    seed: int
    target: str
    landed: str
    fsync_ms: int
    acked: dict[int, int]
    stored: dict[int, int]
    torn_lines: int
    temp_files: int

    def __str__(self) -> str:
        return (
            f"seed={self.seed} target={self.target} landed={self.landed} fsync_ms={self.fsync_ms} "
            f"acked={self.acked} stored={self.stored} torn_lines={self.torn_lines} temp_files={self.temp_files}"
        )


# ---- running and killing the child ----------------------------------------------------------------------------------
class _Output:
    """The child's stdout (a file, so a full pipe can never block it), read line by line as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> Iterator[str]:
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")


def _child_failed(proc: subprocess.Popen[bytes], out: Path, err: Path) -> str:
    status = {VIOLATION_EXIT: "exactly-once VIOLATION", ERROR_EXIT: "ERROR in a thread"}.get(proc.returncode, "exit")
    stdout = "\n".join(line for line in out.read_text(errors="replace").splitlines() if not line.startswith("M "))
    return f"child ended on its own ({status}, status {proc.returncode}):\n{stdout}\n{err.read_text(errors='replace')[-4000:]}"


def _run_and_kill(workdir: Path, seed: int, target: str) -> tuple[Path, Path, Path]:
    """Start the child, aim a SIGKILL at `target`, and return (data root, ack file, stdout file)."""
    rng = random.Random(f"kill/{seed}/{target}/{time.time_ns()}")
    data_root, ack, out, err = (workdir / n for n in ("storage", "acks.txt", "stdout.txt", "stderr.txt"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.crash_child", str(data_root), str(ack), str(seed), target],
            cwd=REPO,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        lines = _Output(out)
        deadline = time.monotonic() + _READY_TIMEOUT
        while "ready" not in lines.new_lines():
            assert proc.poll() is None, _child_failed(proc, out, err)
            assert time.monotonic() < deadline, "the child did not start writing"
            time.sleep(0.01)
        if target == "any":
            time.sleep(rng.uniform(0.3, 4.0))
        else:
            time.sleep(rng.uniform(0.2, 1.5))  # let data pile up, then wait for the phase to start
            for _ in lines.new_lines():
                pass  # markers written while we slept are history
            marker = _TARGET_MARKERS[target]
            deadline = time.monotonic() + _TARGET_TIMEOUT
            while time.monotonic() < deadline and not any(marker.match(line) for line in lines.new_lines()):
                assert proc.poll() is None, _child_failed(proc, out, err)
                time.sleep(0.0005)
            time.sleep(rng.uniform(0, _OFFSET_SECONDS[target]))
        assert proc.poll() is None, _child_failed(proc, out, err)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, _child_failed(proc, out, err)
    return data_root, ack, out


def _read_acks(path: Path) -> Acks:
    """Parse the ack file; a torn last line (the kill landed while it was written) is ignored."""
    clock_ns, top = 0, defaultdict(int)
    for line in path.read_text().split("\n")[:-1]:
        kind, *values = line.split()
        if kind == "C":
            clock_ns = max(clock_ns, int(values[0]))
        else:
            index, first, last = map(int, values)
            assert first == top[index] + 1, f"acks of stream {index} are not contiguous: {line!r} after {top[index]}"
            top[index] = last
    return Acks(clock_ns, dict(top))


def _tear_a_line(config: StorageConfig, seed: int) -> bool:
    """In every other run, leave what a kill in the middle of a write() (or a power cut) leaves: the first
    bytes of the line the writer would have written next, at the end of one stream's newest segment.

    Real kills almost never land inside the write() system call itself (the child writes whole batches
    with one call), so without this, recovery's torn-line truncation would hardly ever be exercised.
    """
    rng = random.Random(f"tear/{seed}")
    if rng.random() < 0.5:
        return False
    streams = child_streams(seed)
    index = rng.randrange(len(streams))
    segments = make_layout(config).segments(streams[index])
    if not segments:
        return False
    data = segments[-1].path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if not complete:
        return False
    last = orjson.loads(complete.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    seq = last["seq"] + 1
    line = orjson.dumps({**last, **tick_for(seed, streams[index], index, seq), "seq": seq})
    with open(segments[-1].path, "ab") as handle:
        handle.write(line[: rng.randint(1, len(line) - 1)])  # never the newline: the line stays incomplete
    return True


def _landed(out: Path) -> str:
    """Where the kill landed: the phases each thread had begun and not ended (`-` when between phases);
    `@commit` when the last thing the jobs thread announced was a pause before a catalog commit."""
    open_phases: dict[str, str] = {}
    for line in out.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] != "M":
            continue
        thread, edge, phase = parts[1:4]
        work = parts[4] if len(parts) == 6 else ""
        if edge == "B":
            open_phases[thread] = f"{phase}({work})" if work else phase
        elif edge == "P":
            if thread in open_phases:
                open_phases[thread] = open_phases[thread].removesuffix("@commit") + "@commit"
        else:
            open_phases.pop(thread, None)
    return ",".join(f"{t}:{open_phases.get(t, '-')}" for t in ("main", "jobs"))


def _landed_in(landed: str, target: str) -> bool:
    patterns = {
        "append": r"main:append",
        "rotate": r"main:append\(rotate\)",
        "archive": r"jobs:archive\([1-9]",
        "compact": r"jobs:compact\([1-9]",
        "maintenance": r"jobs:(retention|maintenance)",
    }
    return target == "any" or re.search(patterns[target], landed) is not None


# ---- checking the store -----------------------------------------------------------------------------------------
class _Expected:
    """The values the child wrote for each (stream, seq), computed once per run."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._ticks: dict[tuple[int, int], dict[str, Any]] = {}

    def tick(self, stream: StreamKey, index: int, seq: int) -> dict[str, Any]:
        key = (index, seq)
        if key not in self._ticks:
            self._ticks[key] = tick_for(self.seed, stream, index, seq)
        return self._ticks[key]


def _check_streams(store: TickStore, expected: _Expected, acked: dict[int, int], when: str) -> dict[int, int]:
    """Every stream whole: seq 1..max exactly once with max >= acknowledged, sorted by (ts, seq), values as written."""
    stored: dict[int, int] = {}
    for index, stream in enumerate(child_streams(expected.seed)):
        table = store.engine.read_stream(stream, 0, 2**62)
        seqs = table.column("seq").to_pylist()
        top = max(seqs, default=0)
        where = f"{when}, stream {stream}"
        assert top >= acked.get(index, 0), f"{where}: acknowledged up to {acked[index]}, stored up to {top}"
        assert sorted(seqs) == list(range(1, top + 1)), f"{where}: seqs {_seq_problems(seqs)}"
        ts = table.column("ts").cast(pa.int64()).to_pylist()
        assert list(zip(ts, seqs, strict=True)) == sorted(zip(ts, seqs, strict=True)), (
            f"{where}: not sorted by (ts, seq)"
        )
        ticks = [expected.tick(stream, index, seq) for seq in seqs]
        assert ts == [t["ts"] for t in ticks], f"{where}: event times differ from what was written"
        assert table.column("source").to_pylist() == [source_of(index)] * len(seqs), f"{where}: sources differ"
        for spec in TICK_FIELDS[stream.tick_type]:
            got = table.column(spec.name).to_pylist()
            want = [t[spec.name] for t in ticks]
            assert got == want, f"{where}: field {spec.name} differs from what was written"
        stored[index] = top
    return stored


def _seq_problems(seqs: list[int]) -> str:
    seen, duplicated = set(), set()
    for seq in seqs:
        (duplicated if seq in seen else seen).add(seq)
    missing = sorted(set(range(1, max(seqs, default=0) + 1)) - seen)
    return f"missing {missing[:10]} (of {len(missing)}), duplicated {sorted(duplicated)[:10]} (of {len(duplicated)})"


def _assert_verified(report: VerifyReport, when: str) -> None:
    problems = "\n".join(f"  {p.kind}: {p.path}: {p.detail}" for p in report.problems)
    assert report.ok, f"verify found {len(report.problems)} problem(s) {when}:\n{problems}"


def crash_run(workdir: Path, seed: int, target: str) -> CrashOutcome:
    """One kill of the child and every check after it."""
    data_root, ack_path, out = _run_and_kill(workdir, seed, target)
    acks = _read_acks(ack_path)
    landed = _landed(out)
    config = child_config(data_root, seed)
    expected = _Expected(seed)
    streams = child_streams(seed)
    clock = ManualClock(max(acks.clock_ns, clock_start(seed)))

    torn_by_hand = _tear_a_line(config, seed)

    # 1. Recovery alone.
    store = TickStore(config, clock).open()
    try:
        torn, temp_files = store.buffer.stats.torn_lines_truncated, store.temp_files_removed
        assert torn >= torn_by_hand, "recovery did not notice the torn last line"
        stored = _check_streams(store, expected, acks.top, f"after recovery (kill landed at {landed})")

        # 2. Time passes (every segment seals, every hour closes); the jobs run once.
        clock.advance(4 * 3600)
        store.run_archival()
        store.run_compaction()
        store.run_maintenance()
        when = f"after re-running the jobs (kill landed at {landed})"
        assert not store.archiver.pending_segments(), f"{when}: segments left unarchived"
        archived = store.index.archived_seqs()
        assert {i: archived.get(s, 0) for i, s in enumerate(streams)} == stored, f"{when}: archive watermarks"
        per_partition: dict[tuple[StreamKey, int], int] = defaultdict(int)
        for f in store.index.files():
            per_partition[(f.stream, f.partition_start)] += 1
        assert set(per_partition.values()) <= {1}, f"{when}: partitions left uncompacted"
        assert _check_streams(store, expected, acks.top, when) == stored

        # Seq goes on where it stopped, and the query API sees the same ticks as the engine.
        recovered = dict(stored)
        for index, stream in enumerate(streams):
            tick = expected.tick(stream, index, stored[index] + 1)
            result = store.append_batch_sync(stream.contract_id, stream.tick_type, [tick], source=source_of(index))
            assert result.first_seq == stored[index] + 1, f"{when}: {stream} went on at {result.first_seq}"
            stored[index] += 1
            frame = StorageQuery(store.engine).query_range_sync(stream.contract_id, stream.tick_type, 0, 2**62)
            assert sorted(frame["seq"]) == list(range(1, stored[index] + 1)), f"{when}: query API of {stream}"
    finally:
        store.close()

    # 3. The catalog matches the files, and can be rebuilt from them alone.
    _assert_verified(verify(config), f"after recovery and re-running the jobs (kill landed at {landed})")
    rebuild(config)
    _assert_verified(verify(config), f"after index rebuild (kill landed at {landed})")
    with TickStore(config, clock) as store:
        assert _check_streams(store, expected, acks.top, f"after index rebuild (kill landed at {landed})") == stored
    return CrashOutcome(seed, target, landed, config.fsync_interval_ms, acks.top, recovered, torn, temp_files)


# ---- the tests ----------------------------------------------------------------------------------------------------
def test_kill9_at_every_phase_loses_nothing(tmp_path: Path) -> None:
    """One kill per target phase; archival and compaction kills are retried until one lands inside its phase."""
    outcomes = []
    for n, target in enumerate(TARGETS):
        for attempt in range(3):
            outcome = crash_run(_fresh(tmp_path / f"{target}-{attempt}"), seed=n, target=target)
            outcomes.append(outcome)
            if target not in ("archive", "compact") or _landed_in(outcome.landed, target):
                break
    print("\n" + "\n".join(map(str, outcomes)))
    for target in ("archive", "compact"):
        assert any(o.target == target and _landed_in(o.landed, target) for o in outcomes), (
            f"no kill landed inside {target} in 3 tries:\n" + "\n".join(map(str, outcomes))
        )


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 160))
def test_kill9_soak(tmp_path: Path, seed: int) -> None:
    """60 kills spread over all target phases, fsync intervals and stream counts."""
    outcome = crash_run(tmp_path, seed, TARGETS[seed % len(TARGETS)])
    print(f"\n{outcome}")


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


# ---- regression tests for bugs found while writing the crash test --------------------------------------------------------
class _Crash(BaseException):
    """Stands for the process dying at the point where it is raised."""


def _crash(*args: Any, **kwargs: Any) -> None:
    raise _Crash


def _compaction_crash_then_late_tick(
    config: StorageConfig, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two parts in the hour before T0; compaction dies after renaming its file into place but before the
    catalog commit; after the restart a late tick adds a third part to that hour before compaction re-runs."""
    hour_ago = T0_NS - HOUR_NS
    store = TickStore(config, clock).open()
    for k in range(2):
        store.append_batch_sync(CONTRACT, "last", [trade(hour_ago + k, k)])
        clock.advance(900)
        store.run_archival()
    monkeypatch.setattr(PartitionIndex, "replace", _crash)
    with pytest.raises(_Crash):
        store.run_compaction()
    monkeypatch.undo()
    store.close()
    with TickStore(config, clock) as store:
        store.append_batch_sync(CONTRACT, "last", [trade(hour_ago + 5, 5)])
        clock.advance(900)
        store.run_archival()
        store.run_compaction()
        store.run_maintenance()


def test_crash_inside_compaction_leaves_no_stray_file(
    config: StorageConfig, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _compaction_crash_then_late_tick(config, clock, monkeypatch)
    _assert_verified(verify(config), "after a crash inside compaction and a re-run")


def test_rebuild_after_a_crash_inside_compaction_keeps_ticks_once(
    config: StorageConfig, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _compaction_crash_then_late_tick(config, clock, monkeypatch)
    rebuild(config)
    clock.advance(25 * 3600)  # past buffer retention: the archive alone answers
    with TickStore(config, clock) as store:
        store.run_retention()
    with TickStore(config, clock) as store:
        seqs = store.engine.read_stream(StreamKey(CONTRACT, TickType.LAST), 0, 2**62).column("seq").to_pylist()
        assert seqs == [1, 2, 3]
        store.run_compaction()  # must not fail with "holds duplicate seqs"


def test_compaction_keeps_retired_files_while_an_earlier_reader_runs(store: TickStore, clock: ManualClock) -> None:
    """A reader that planned before compaction must still find the files compaction retired (a store clock
    behind wall time, as in tests and replays, must not change that)."""
    for k in range(2):
        store.append_batch_sync(CONTRACT, "last", [trade(T0_NS - HOUR_NS + k, k)])
        clock.advance(900)
        store.run_archival()
    parts = [store.layout.absolute(f.file_path) for f in store.index.files()]
    with store.index.readers.reading():
        store.run_compaction()
        assert all(p.exists() for p in parts), "files retired by compaction were deleted under a running reader"
