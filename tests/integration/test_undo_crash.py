"""Crash test of `import undo`: `kill -9` a process in the middle of undoing imports, run the undo again, and the store
answers exactly as a store that never made the imports.

The store is the one of `tests/support/undo_scenario.py` (recorded ticks, two imports to undo over compacted,
rolled-up, snapshotted hours, one import to keep). A child (`tests.integration.undo_crash_child`) undoes the two
imports; before each catalog swap of a rewritten partition, after writing the new file, it announces the swap and
pauses 30 ms, and it announces each buffer segment rewrite. The parent kills it at a chosen announcement with a
random offset (mostly between a file and its catalog commit), then in this process:

1. `verify` may find the half-done state, but opening the store repairs nothing by itself: the imports interrupted
   are listed `undoing` (or still `imported` when the kill came before their undo began);
2. the undo of both imports is run again: every answer — ticks, bars from rollups and from ticks, books, daily
   statistics — equals the oracle's, before and after the rollup and snapshot jobs run again;
3. `verify` is clean; `index rebuild` from the files alone gives the same answers.

The normal suite runs four kills (a swap of the first undo and of the second, a segment rewrite, between the
two undos); `-m slow` adds twelve at random announcements.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ib_stream.clock import ManualClock
from ib_stream.importers.undo import list_imports, undo_import
from ib_stream.storage import TickStore
from ib_stream.store.repair import rebuild, verify
from tests.conftest import T0
from tests.support import undo_scenario as scenario
from tests.unit.test_importers_undo import config_at

REPO = Path(__file__).resolve().parents[2]
ORDER = (2, 1)  # the child undoes the MBP-1 import, then the order-flow one
MARKERS = [*(f"commit {n}" for n in range(1, 13)), *(f"segment {n}" for n in range(1, 5)), "undone 2"]
_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a store that never made the X imports answers (built once for the module)."""
    return scenario.oracle(tmp_path_factory.mktemp("oracle"))


def _kill_at(data_root: Path, clock_ns: int, marker: str, offset: float, workdir: Path) -> str:
    """Run the child until it prints `M <marker>`, wait `offset` seconds, SIGKILL it; return its output."""
    out, err = workdir / "child.out", workdir / "child.err"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-m", "tests.integration.undo_crash_child", str(data_root), str(clock_ns)]
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([*args, *map(str, ORDER)], cwd=REPO, env=env, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + _TIMEOUT
        while f"M {marker}\n" not in out.read_text():
            assert proc.poll() is None, f"the child ended before {marker}: {out.read_text()} {err.read_text()}"
            assert time.monotonic() < deadline, f"no {marker} from the child"
            time.sleep(0.0005)
        time.sleep(offset)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    printed = out.read_text()
    # (After the last announcement the child may finish before the kill lands: then it must have finished well.)
    assert proc.returncode == -signal.SIGKILL or (proc.returncode == 0 and "M undone 1" in printed), printed
    return printed


def _crash_and_rerun(tmp_path: Path, oracle: dict[str, Any], marker: str, offset: float) -> None:
    clock = ManualClock(T0)
    config = config_at(tmp_path / "storage")
    scenario.build(config, clock, undone=False, directory=tmp_path / "files")
    printed = _kill_at(config.data_root, clock.now_ns(), marker, offset, tmp_path)
    states = {i.import_id: i.state for i in list_imports(config.index_file)}
    assert states[scenario.Y_ID] == "imported"
    assert states[2] == ("undone" if "M undone 2" in printed else "undoing")
    assert states[1] == "undone" if "M undone 1" in printed else states[1] in ("imported", "undoing")
    with TickStore(config, clock) as store:
        for import_id in ORDER:
            undo_import(store, import_id)
        scenario.assert_same(scenario.observe(store), oracle, f"killed at {marker} +{offset:.3f}s, undone again")
        store.run_rollups()
        store.run_snapshots()
        scenario.assert_same(scenario.observe(store), oracle, "after the jobs ran again")
    problems = verify(config).problems
    assert not problems, problems
    rebuild(config)
    with TickStore(config, clock) as store:
        scenario.assert_same(scenario.observe(store), oracle, "after index rebuild")
    assert [i.state for i in list_imports(config.index_file)] == ["undone", "undone", "imported"]


@pytest.mark.parametrize(("marker", "offset"), [("commit 2", 0.015), ("commit 9", 0.035), ("segment 1", 0.0),
                                                 ("undone 2", 0.0)])  # fmt: skip
def test_a_killed_undo_run_again_leaves_the_store_as_if_the_imports_never_happened(
    tmp_path: Path, oracle: dict[str, Any], marker: str, offset: float
) -> None:
    _crash_and_rerun(tmp_path, oracle, marker, offset)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12))
def test_undo_killed_at_random_moments(tmp_path: Path, oracle: dict[str, Any], seed: int) -> None:
    rng = random.Random(f"undo-kill/{seed}")
    _crash_and_rerun(tmp_path, oracle, rng.choice(MARKERS), rng.uniform(0, 0.04))
