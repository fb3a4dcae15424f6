"""A `SegmentIO` that fails on purpose: arm an operation to raise OSError(errno) at its Nth call from now.

    io = FaultyIO()
    store.buffer.io = io
    io.arm("write", errno.ENOSPC)                 # the next write fails (nothing of it written)
    io.arm("write", errno.ENOSPC, partial=True)   # the next write writes half its bytes, then fails
    io.arm("fsync", errno.EIO, at=2, times=None)  # the 2nd fsync from now and every one after it fail
    io.disarm()                                   # the disk is back

Operations: `open` (a segment, a temp file or the probe), `write`, `fsync` (files), `dir` (creating or
fsyncing a directory), `truncate`, `replace`. Every call is counted in `calls` whether or not it fails.
"""

from __future__ import annotations

import collections
import errno as errnos
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ib_stream.store.segment_io import SegmentIO

OPERATIONS = ("open", "write", "fsync", "dir", "truncate", "replace")


@dataclass
class _Rule:
    errno: int
    at: int  # fail from the at-th call after arming
    times: int | None  # how many calls fail (None: until disarmed)
    partial: bool
    seen: int = 0
    failed: int = 0


class FaultyIO(SegmentIO):
    """Plain syscalls, except where armed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: dict[str, _Rule] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()

    def arm(
        self, op: str, errno: int = errnos.ENOSPC, *, at: int = 1, times: int | None = 1, partial: bool = False
    ) -> None:
        assert op in OPERATIONS, op
        with self._lock:
            self._rules[op] = _Rule(errno, at, times, partial)

    def disarm(self, op: str | None = None) -> None:
        with self._lock:
            if op is None:
                self._rules.clear()
            else:
                self._rules.pop(op, None)

    def _fails(self, op: str) -> _Rule | None:
        with self._lock:
            self.calls[op] += 1
            rule = self._rules.get(op)
            if rule is None:
                return None
            rule.seen += 1
            if rule.seen < rule.at or (rule.times is not None and rule.failed >= rule.times):
                return None
            rule.failed += 1
            self.failures[op] += 1
            return rule

    def _raise(self, rule: _Rule, path: Path | None = None) -> None:
        raise OSError(rule.errno, os.strerror(rule.errno), str(path) if path is not None else None)

    # ---- the seam ------------------------------------------------------------------------------------------
    def open_append(self, path: Path) -> int:
        if rule := self._fails("open"):
            self._raise(rule, path)
        return super().open_append(path)

    def open_new(self, path: Path) -> int:
        if rule := self._fails("open"):
            self._raise(rule, path)
        return super().open_new(path)

    def write(self, fd: int, data: bytes) -> None:
        if rule := self._fails("write"):
            if rule.partial:
                os.write(fd, data[: max(1, len(data) // 2)])
            self._raise(rule)
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if rule := self._fails("fsync"):
            self._raise(rule)
        super().fsync(fd)

    def fsync_dir(self, directory: Path) -> None:
        if rule := self._fails("dir"):
            self._raise(rule, directory)
        super().fsync_dir(directory)

    def truncate(self, fd: int, size: int) -> None:
        if rule := self._fails("truncate"):
            self._raise(rule)
        super().truncate(fd, size)

    def replace(self, source: Path, target: Path) -> None:
        if rule := self._fails("replace"):
            self._raise(rule, target)
        super().replace(source, target)
