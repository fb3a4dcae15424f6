"""Times at the edges (core): parsing what callers pass in, and formatting UTC int64 ns for output.

At rest every timestamp is UTC int64 ns; time zones appear only here and in the session rules.
"""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd

from ib_stream.clock import to_ns
from ib_stream.errors import ValidationError

TimeLike = datetime | date | pd.Timestamp | str | int | np.datetime64


def to_utc_ns(value: TimeLike, field: str = "time") -> int:
    """Convert a time to UTC int64 ns; naive values are local time, ints are ns since the epoch."""
    if isinstance(value, bool):
        raise ValidationError(field, value, "is not a time")
    if isinstance(value, int | np.integer):
        return int(value)
    try:
        if isinstance(value, pd.Timestamp):
            stamp = value
        elif isinstance(value, datetime):
            return to_ns(value)
        elif isinstance(value, date):
            return to_ns(datetime(value.year, value.month, value.day))
        else:
            stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as e:
        raise ValidationError(field, value, "is not a valid time (use ISO-8601 with an offset or Z)") from e
    if stamp is pd.NaT:
        raise ValidationError(field, value, "is not a valid time")
    if stamp.tzinfo is None:
        # Local time with the offset in force on that date (DST), like datetime.astimezone().
        offset = stamp.to_pydatetime(warn=False).astimezone().utcoffset()
        assert offset is not None
        return int(stamp.value) - (offset.days * 86_400 + offset.seconds) * 1_000_000_000
    return int(stamp.tz_convert("UTC").value)


def iso_compact(ns: int) -> str:
    """UTC ISO-8601 with Z and only the fraction digits the value needs (for messages)."""
    return pd.Timestamp(ns, unit="ns", tz="UTC").isoformat().replace("+00:00", "Z")
