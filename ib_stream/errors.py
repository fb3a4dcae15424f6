"""One exception tree for the whole package; foreign errors are translated at the boundary.

IbStreamError                      base: code, message, details
├── ConfigError                    bad settings file / environment value
├── SourceError                    a market-data source failed
├── StorageError                   the store cannot read or write
│   ├── StorageWriteError          a buffer write or fsync failed: the batch was not stored (retry later)
│   │   └── StorageFullError       the same, because the disk is full (ENOSPC / quota)
│   ├── CorruptFileError           a Parquet/JSONL file is unreadable (names the file)
│   └── DataRootLockedError        another process owns the data root for writing
├── ValidationError                bad input, always names the field and the value
│   ├── TickValidationError        a tick was rejected (stream, index in batch, field, value)
│   └── InvalidTickTypeError       a stream was asked for an unknown tick type
├── QueryError                     a query cannot be answered as asked
│   └── NotFoundError              unknown contract / stream / file
│       └── ContractNotFoundError  the contract is not configured
└── SlowConsumerError              a live subscriber fell too far behind and was disconnected
"""

from __future__ import annotations

from typing import Any


class IbStreamError(Exception):
    """Base of every error raised by ib_stream."""

    code = "IB_STREAM_ERROR"
    http_status = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON error shape `{"error": {code, message, details}}`."""
        details = {k: _jsonable(v) if isinstance(v, int) else v for k, v in self.details.items()}
        return {"error": {"code": self.code, "message": self.message, "details": details}}


class ConfigError(IbStreamError):
    code = "CONFIG_ERROR"


class SourceError(IbStreamError):
    code = "SOURCE_ERROR"
    http_status = 502


class StorageError(IbStreamError):
    code = "STORAGE_ERROR"


class StorageWriteError(StorageError):
    """A buffer write, fsync or high-water record failed: nothing of the batch was kept and its seqs were not used.

    The store keeps refusing appends (promptly, with this error) until a retry finds it writable again;
    `details` has `path`, `errno` and `retry_after_seconds`. Same code as `StorageError`, answered with 503.
    """

    http_status = 503


class StorageFullError(StorageWriteError):
    """The disk (or the quota) holding the buffer is full: answered with 507 Insufficient Storage."""

    code = "STORAGE_FULL"
    http_status = 507


class CorruptFileError(StorageError):
    code = "CORRUPT_FILE"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"file {path} is unreadable: {reason}", details={"path": path, "reason": reason})
        self.path = path


class DataRootLockedError(StorageError):
    code = "DATA_ROOT_LOCKED"
    http_status = 409


class ValidationError(IbStreamError):
    code = "INVALID_INPUT"
    http_status = 422

    def __init__(self, field: str, value: Any, reason: str, **details: Any) -> None:
        shown = excerpt(value)
        super().__init__(f"{field} {shown} {reason}", details={"field": field, "value": _jsonable(value), **details})
        self.field = field
        self.value = value


class TickValidationError(ValidationError):
    code = "INVALID_TICK"


class InvalidTickTypeError(ValidationError):
    """A stream was asked for an unknown tick type (protocol code INVALID_TICK_TYPE)."""

    code = "INVALID_TICK_TYPE"


class QueryError(IbStreamError):
    code = "INVALID_QUERY"
    http_status = 400


class NotFoundError(QueryError):
    code = "NOT_FOUND"
    http_status = 404


class ContractNotFoundError(NotFoundError):
    """The contract is not configured (protocol code CONTRACT_NOT_FOUND)."""

    code = "CONTRACT_NOT_FOUND"


class SlowConsumerError(IbStreamError):
    """A live subscriber fell more than its queue size behind and was disconnected."""

    code = "SLOW_CONSUMER"
    http_status = 503


EXCERPT_CHARS = 200  # an error message shows at most this much of the input it complains about


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short, printable form of an input value for an error message: strings as they are, anything else as
    its repr; past `limit` characters cut with the full length noted; lone surrogates escaped (valid UTF-8)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return excerpt(value)
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)  # JSON consumers stop at 64 bits
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    return excerpt(value)
