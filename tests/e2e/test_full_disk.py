"""A real full disk: the data root on a 24 MiB tmpfs that is filled up while a real uvicorn server serves it.

The tmpfs is mounted in a private user + mount namespace (`unshare -rm`: no root needed where user namespaces
are allowed) and `tests.e2e.full_disk_child` runs the scenario there, so the mount vanishes with the process.
Where `unshare` / `mount` is not permitted (some CI containers) the test is skipped with the reason: the
injected-failure tests (`tests/unit/test_buffer_failures.py`, `tests/e2e/test_storage_failures.py`) cover the
same code paths on every machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SIZE = "24m"
REPO = Path(__file__).resolve().parents[2]


def _mount_refused(directory: Path) -> str | None:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare or mount is not installed"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=1m tmpfs "{directory}"'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return None if probe.returncode == 0 else (probe.stderr.strip() or f"exit code {probe.returncode}")


def test_on_a_real_small_filesystem(tmp_path: Path) -> None:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    refused = _mount_refused(mount_point)
    if refused:
        pytest.skip(f"a small tmpfs cannot be mounted here without privileges ({refused})")
    script = f'mount -t tmpfs -o size={SIZE} tmpfs "$1" && exec "$2" -m tests.e2e.full_disk_child "$1"'
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(mount_point), sys.executable],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout[-3000:] + run.stderr[-6000:]
