"""docs/howto/import-recordings.md stays true: its Python example runs, every preset and skip reason is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ib_stream.importers import PRESETS
from ib_stream.settings import StorageConfig
from tests.unit.test_importers_orderflow import EXPECTED_SKIPPED, write_recording

DOC = Path(__file__).resolve().parents[2] / "docs" / "howto" / "import-recordings.md"


def text() -> str:
    return DOC.read_text()


def test_the_python_example_runs(config: StorageConfig, tmp_path: Path) -> None:
    trades_csv = tmp_path / "trades.csv"
    rows = [f"{1736517600000 + i},{i},100.5,0.25,{i % 2 == 0}" for i in range(57)]
    trades_csv.write_text("\n".join(["timestamp_ms_utc,trade_id,price,quantity,buyer_maker", *rows]) + "\n")
    flow = write_recording(tmp_path / "flow.db", [(1, "BTCUSDT", "[[1, 2]]", "[[3, 4]]", "1736517600000")], [])
    (block,) = re.findall(r"```python\n(.*?)```", text(), re.S)
    namespace = {"data_root": config.data_root, "trades_file": trades_csv, "flow_file": flow}
    exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["report"].ticks_stored == 57
    assert namespace["flow"].ticks_stored == 2
    assert namespace["undone"].removal.ticks_removed == 2


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_documented(name: str) -> None:
    assert f"| `{name}` |" in text()


@pytest.mark.parametrize("reason", list(EXPECTED_SKIPPED))
def test_every_order_flow_skip_reason_is_documented(reason: str) -> None:
    detail = reason.split(": ", 1)[1]
    assert f"`{reason}`" in text() or f"`…: {detail}`" in text()
