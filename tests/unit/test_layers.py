"""The layers contract (pyproject `[tool.importlinter]`) holds, and it fails on an upward import — a
function-local one included — so it guards the layering rather than passing whatever the code does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache", str(project / "pyproject.toml")],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(project), "PATH": str(LINT.parent), "LANG": "C.UTF-8"},
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "ib_stream", tmp_path / "ib_stream", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layers_contract_holds(project: Path) -> None:
    result = lint(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("analytics/obi.py", "from ib_stream.store.query import QueryEngine"),  # analytics -> storage
        ("store/layout.py", "from ib_stream.orderflow.service import OrderFlow"),  # storage -> service
        ("client.py", "from ib_stream.store.schema import arrow_schema"),  # client -> storage
        ("settings.py", "from ib_stream.alerts.rules import RuleState"),  # core -> consumer
        ("api/routes/replay.py", "from ib_stream.api.routes.buffer import router"),  # route -> route
    ],
)
def test_an_upward_import_breaks_it(project: Path, module: str, line: str) -> None:
    path = project / "ib_stream" / module
    path.write_text(path.read_text() + f"\n\ndef _upward() -> None:\n    {line}  # noqa\n")
    result = lint(project)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
