"""The Python examples of README.md and docs/howto/query-from-python.md, and the README's curl commands, run
verbatim against a running service.

As a newcomer would: `ib-stream serve --data-dir <elsewhere>` (what `make run ARGS="--data-dir …"` starts)
records the simulated market; the examples run in a directory without a `storage/` of its own, so
`StorageQuery()` has to find the service's data root. Two earlier hours are archived first, so the DuckDB
examples have Parquet to read.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from tests.conftest import quote, trade
from tests.e2e.conftest import AAPL
from tests.integration.test_backup_restore import serve, stop

REPO = Path(__file__).resolve().parents[2]
HOUR = 3600 * NS_PER_SECOND
pytestmark = pytest.mark.timeout(240)


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def archive_two_hours(root: Path) -> None:
    """Two hours of simulated-source trades and quotes, ending an hour ago, archived."""
    now = time.time_ns()
    first = now - now % HOUR - 3 * HOUR
    clock = ManualClock(first)
    store = TickStore(StorageConfig(data_root=root), clock).open()
    try:
        for minute in range(120):
            base = first + minute * 60 * NS_PER_SECOND
            store.append_batch_sync(AAPL, "last", [trade(base + i * 6 * NS_PER_SECOND, i) for i in range(10)], "sim")
            store.append_batch_sync(AAPL, "bid_ask", [quote(base + i * 3 * NS_PER_SECOND, i) for i in range(20)], "sim")
            clock.set(base + 60 * NS_PER_SECOND)
        clock.set(now)
        store.run_archival()
    finally:
        store.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("newcomer")
    elsewhere = home / "ticks"
    archive_two_hours(elsewhere)
    state = home / "state"
    saved = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "IB_STREAM_STORAGE__DATA_ROOT")}
    os.environ["XDG_STATE_HOME"] = str(state)  # the service lists itself here; StorageQuery() looks here
    os.environ.pop("IB_STREAM_STORAGE__DATA_ROOT", None)
    process, url = serve(elsewhere)
    cwd = os.getcwd()
    work = home / "work"
    work.mkdir()
    os.chdir(work)  # no storage/ here: the settings' data root holds no catalog
    try:
        time.sleep(3)  # a few seconds of live ticks
        yield elsewhere, url
    finally:
        os.chdir(cwd)
        stop(process)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def newcomer(service: tuple[Path, str]) -> Path:
    return service[0]


def test_the_readme_curl_commands_answer(service: tuple[Path, str]) -> None:
    """Every curl line of the README's "Try it" block, with the test service's address: HTTP 200 and a body."""
    block = re.search(r"## Try it\n\n```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line.startswith("curl ")]
    assert len(commands) >= 8
    for command in commands:
        runnable = command.replace("http://127.0.0.1:8000", service[1]).replace("curl ", "curl -sSf --max-time 60 ", 1)
        done = subprocess.run(["bash", "-c", runnable], capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, f"{command}: {done.stderr}"
        assert done.stdout.strip(), command


def test_the_readme_example_runs_against_the_running_service(
    newcomer: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = python_blocks(REPO / "README.md")
    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert Path(namespace["query"].config.data_root).resolve() == newcomer.resolve()
    assert len(namespace["ticks"]) > 0 and len(namespace["bars"]) in (10, 11)
    assert namespace["flow"]["trade_count"].sum() == (namespace["ticks"]["tick_type"] == "last").sum()
    assert "ticks;" in capsys.readouterr().out


def test_the_query_from_python_examples_run_against_the_running_service(newcomer: Path) -> None:
    blocks = python_blocks(REPO / "docs" / "howto" / "query-from-python.md")
    assert len(blocks) >= 8
    namespace: dict[str, Any] = {}
    for block in blocks:
        exec(compile(block, "docs/howto/query-from-python.md", "exec"), namespace)
    assert len(namespace["ticks"]) > 0 and namespace["ticks"]["timestamp"].max() < namespace["end"]
    assert len(namespace["bars"]) in (15, 16) and len(namespace["flow"]) in (15, 16)
    assert namespace["files"], "the two archived hours"
    assert namespace["minute_bars"]["trades"].sum() == 120 * 10
    assert int(namespace["daily"]["ticks"].sum()) == 120 * 30
    assert isinstance(namespace["same"], pd.DataFrame)
