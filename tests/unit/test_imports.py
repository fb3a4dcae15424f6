"""Every module of the package imports on its own, as the first ib_stream import of a program (no import cycle
that only works in some orders: `from ib_stream.orderflow.service import OrderFlow` first once failed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib, pkgutil, sys, traceback
import ib_stream
names = [m.name for m in pkgutil.walk_packages(ib_stream.__path__, "ib_stream.")]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "ib_stream" or m.startswith("ib_stream.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print(len(names))
print("\\n".join(failed))
"""


def test_every_module_imports_first() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    count, *failed = done.stdout.strip().splitlines()
    assert int(count) > 80
    assert failed == [], "\n".join(failed)
