"""The file operations of the buffer's writer thread, in one swappable object, and how their failures are named.

`SegmentIO` is a seam: the writer opens, writes, fsyncs, truncates and removes segment files only through
it, so a test can swap in one that fails on purpose (ENOSPC at the third write, EIO on an fsync) and check
that a failed group leaves nothing behind. Files are raw file descriptors (no user-space buffer): after a
failed `write` no bytes wait in a buffer to reach the file later, and a cut-back is one `ftruncate`.

`write_error` turns an OSError (or a failed high-water record) into the error an append raises:
`StorageFullError` for ENOSPC / EDQUOT, else `StorageWriteError`.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from ib_stream.errors import StorageError, StorageFullError, StorageWriteError
from ib_stream.store.layout import fsync_dir

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
_COPY_CHUNK = 1 << 20


class SegmentIO:
    """Open, write, fsync, truncate and remove buffer files (the production implementation: plain syscalls)."""

    def open_append(self, path: Path) -> int:
        """Open (creating) a segment for appending; readable too, so a vanished file can be copied back."""
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def open_new(self, path: Path) -> int:
        """Create (or empty) a file for writing: a temp file or the write probe."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

    def write(self, fd: int, data: bytes) -> None:
        """Write all of `data` (a short write is continued; an error leaves what was written, for the cut-back)."""
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def close(self, fd: int) -> None:
        os.close(fd)

    def fsync_dir(self, directory: Path) -> None:
        fsync_dir(directory)

    def make_dirs(self, directory: Path) -> None:
        """Create `directory` and its missing parents, each made durable in its parent."""
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
            self.fsync_dir(path.parent)

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    # ---- composed operations ----------------------------------------------------------------------------
    def copy_out(self, fd: int, target: Path) -> int:
        """Copy everything `fd` holds into a new durable file `target`; return the bytes copied."""
        size = os.fstat(fd).st_size
        out = self.open_new(target)
        try:
            offset = 0
            while offset < size:
                chunk = os.pread(fd, min(_COPY_CHUNK, size - offset), offset)
                if not chunk:
                    break
                self.write(out, chunk)
                offset += len(chunk)
            self.fsync(out)
        finally:
            self.close(out)
        return offset

    def probe(self, path: Path, size: int) -> None:
        """Create `path` durably with `size` bytes, then remove it: raises while the disk cannot do what a write
        to a new segment does."""
        fd = self.open_new(path)
        try:
            self.write(fd, b"\0" * size)
            self.fsync(fd)
            self.fsync_dir(path.parent)
        finally:
            self.close(fd)
            self.remove(path)


def write_error(
    error: BaseException, what: str, retry_after_seconds: float, consequence: str | None = None
) -> StorageWriteError:
    """The error of a failed write: full (507) for ENOSPC / EDQUOT, else a write error (503).

    `consequence` says what it means for the caller (default: an append's, whose batch was not stored).
    """
    number, path = _errno_and_path(error)
    full = number in _FULL_ERRNOS
    reason = os.strerror(number) if number is not None else str(error)
    where = f" ({path})" if path else ""
    consequence = consequence or (
        "nothing of the batch was stored and its seqs were not used; appends are refused until a retry "
        f"(every {retry_after_seconds:g}s or more) finds the disk writable"
    )
    message = f"{what} failed: {reason}{where}; {consequence}"
    details = {"errno": number, "reason": reason, "path": path, "retry_after_seconds": retry_after_seconds}
    return (StorageFullError if full else StorageWriteError)(message, details=details)


def _errno_and_path(error: BaseException) -> tuple[int | None, str | None]:
    if isinstance(error, OSError):
        return error.errno, error.filename if isinstance(error.filename, str) else None
    cause = error.__cause__
    if isinstance(error, StorageError) and isinstance(cause, sqlite3.Error):
        code = getattr(cause, "sqlite_errorcode", None)
        return (errno.ENOSPC if code == _SQLITE_FULL or "full" in str(cause) else errno.EIO), None
    return None, None
