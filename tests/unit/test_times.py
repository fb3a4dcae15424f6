"""Times at the edges: each surface's parser keeps its rule for a time without an offset (Python: local time,
HTTP and CLI: refused, importers: UTC), and the one formatter family writes what independent oracles write."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ib_stream import times
from ib_stream.domain import MAX_TS_NS, MIN_TS_NS
from ib_stream.errors import ValidationError
from ib_stream.times import (
    iso_basic,
    iso_compact,
    iso_ns,
    iso_us,
    parse_cli_duration,
    parse_cli_time,
    parse_http_time,
    parse_recording_time,
    to_utc_ns,
)

NAIVE = "2025-01-10T09:30:00"
AS_UTC = pd.Timestamp(NAIVE, tz="UTC").value
AS_NEW_YORK = pd.Timestamp(NAIVE, tz="America/New_York").value  # 14:30Z: EST is UTC-5 in January
STAMPS = st.integers(min_value=MIN_TS_NS, max_value=MAX_TS_NS - 1)


@pytest.fixture
def new_york() -> Iterator[None]:
    """Run with the process time zone set to America/New_York, so local time is not UTC."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


# ---- one parser per surface, each with its rule for a naive time -------------------------------------------
def test_each_surface_reads_a_naive_time_by_its_own_rule(new_york: None) -> None:
    assert to_utc_ns(NAIVE) == to_utc_ns(datetime.fromisoformat(NAIVE)) == AS_NEW_YORK  # Python: local time
    assert parse_recording_time(NAIVE) == AS_UTC  # importers: recordings are written in UTC
    with pytest.raises(ValidationError) as http:
        parse_http_time(NAIVE, "start_time")
    assert http.value.field == "start_time" and "needs a UTC offset or Z" in http.value.message
    with pytest.raises(ValidationError) as cli:
        parse_cli_time(NAIVE, "--start")
    assert cli.value.field == "--start" and "has no UTC offset" in cli.value.message


@pytest.mark.parametrize("parse", [to_utc_ns, parse_recording_time, lambda t: parse_http_time(t, "t")])
def test_every_surface_agrees_on_a_time_with_an_offset(parse: Callable[[str], int]) -> None:
    text = "2025-01-10T09:30:00.123456789-05:00"
    assert parse(text) == pd.Timestamp(text).value


def test_http_times_keep_nanoseconds_and_refuse_years_outside_1990_2199() -> None:
    assert parse_http_time("2025-01-10T14:30:00.000000001Z", "at") == pd.Timestamp("2025-01-10T14:30Z").value + 1
    assert parse_http_time(" 2025-01-10T15:30+0100 ", "at") == pd.Timestamp("2025-01-10T14:30Z").value
    for text in ("1989-12-31T23:59:59Z", "2200-01-01T00:00:00Z"):
        with pytest.raises(ValidationError, match=r"outside the years 1990\.\.2199"):
            parse_http_time(text, "at")
    with pytest.raises(ValidationError, match="is not an ISO-8601 time"):
        parse_http_time("yesterday Z", "at")


def test_cli_times_are_read_to_the_microsecond() -> None:
    expected = pd.Timestamp("2025-01-10T14:30:00.123456Z").value
    assert parse_cli_time("2025-01-10T14:30:00.123456789Z", "--start") == expected
    assert parse_cli_time("2025-01-10T09:30:00.123456-05:00", "--start") == expected
    with pytest.raises(ValidationError, match="is not an ISO-8601 time"):
        parse_cli_time("10/01/2025 14:30", "--end")


NOW = pd.Timestamp("2025-01-10T14:30:00.5Z").value


@pytest.mark.parametrize(
    ("text", "seconds_ago"),
    [("now", 0), ("NOW", 0), ("-30m", 1800), ("now-30m", 1800), ("now - 1.5h", 5400), ("-90s", 90), ("-2d", 172800)],
)
def test_cli_times_may_be_relative_to_now(text: str, seconds_ago: float) -> None:
    assert parse_cli_time(text, "--start", NOW) == NOW - int(seconds_ago * 1_000_000_000)


def test_relative_cli_times_default_to_the_system_clock() -> None:
    before = time.time_ns()
    assert before - 60 * 10**9 <= parse_cli_time("-1m", "--end") <= time.time_ns() - 60 * 10**9


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-", "ISO-8601 time or a relative one"),
        ("now-", "ISO-8601 time or a relative one"),
        ("now+1h", "ISO-8601 time or a relative one"),  # only the past: there is no data ahead of now
        ("-30x", "ISO-8601 time or a relative one"),
        ("-50000d", "before the year 1990"),
        ("-999999999d", "longer than the years 1990..2199 span"),
        ("0001-01-01T00:00:00Z", "outside the years 1990..2199"),  # would overflow: year 1 is not int64 ns
        ("9999-12-31T23:59:59+01:00", "outside the years 1990..2199"),
        ("1989-12-31T23:59:59Z", "outside the years 1990..2199"),
    ],
)
def test_cli_times_outside_the_years_or_malformed_are_refused_naming_the_option(text: str, reason: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_cli_time(text, "--start", NOW)
    assert refused.value.field == "--start" and refused.value.message.startswith(f"--start {text} ")
    assert reason in refused.value.message


def test_cli_durations_for_last() -> None:
    assert parse_cli_duration("2h", "--last") == 7200 * 10**9
    assert parse_cli_duration(" 1.5m ", "--last") == 90 * 10**9
    for bad, reason in (("0s", "longer than 0"), ("2 weeks", "not a duration"), ("-2h", "not a duration")):
        with pytest.raises(ValidationError, match=reason):
            parse_cli_duration(bad, "--last")


def test_recording_times_accept_what_recorders_write() -> None:
    assert parse_recording_time("2025-01-10 14:30:00,5") == pd.Timestamp("2025-01-10T14:30:00.5Z").value
    assert parse_recording_time("2025-01-10T15:30+01") == pd.Timestamp("2025-01-10T14:30Z").value
    for bad in ("2025-02-30T00:00:00Z", "2025-01-10", "1736519400"):
        with pytest.raises(ValueError):
            parse_recording_time(bad)


# ---- one formatter family -----------------------------------------------------------------------------------
@given(STAMPS)
def test_iso_ns_writes_what_numpy_writes(ns: int) -> None:
    assert iso_ns(ns) == f"{np.datetime_as_string(np.datetime64(ns, 'ns'), unit='ns')}Z"


@given(STAMPS)
def test_iso_us_writes_what_numpy_writes_truncated_to_the_microsecond(ns: int) -> None:
    assert iso_us(ns) == f"{np.datetime_as_string(np.datetime64(ns, 'ns'), unit='us')}Z"


@given(STAMPS)
def test_iso_basic_writes_what_pandas_writes(ns: int) -> None:
    assert iso_basic(ns) == pd.Timestamp(ns, unit="ns", tz="UTC").strftime("%Y%m%dT%H%M%SZ")


def test_the_formats_byte_for_byte() -> None:
    ns = 1_736_519_400_123_456_789  # 2025-01-10T14:30:00.123456789Z
    assert iso_ns(ns) == "2025-01-10T14:30:00.123456789Z"
    assert iso_us(ns) == "2025-01-10T14:30:00.123456Z"
    assert iso_compact(ns) == "2025-01-10T14:30:00.123456789Z"
    assert iso_compact(ns - 123_456_789) == "2025-01-10T14:30:00Z"
    assert iso_basic(ns) == "20250110T143000Z"
    assert iso_ns(0) == "1970-01-01T00:00:00.000000000Z" and iso_us(-1) == "1969-12-31T23:59:59.999999Z"


def test_times_holds_every_parser_and_formatter() -> None:
    # The names other modules used to define (clock.iso, clock.iso_ns, protocol.iso_us, params.parse_time,
    # params.now_iso, importers.values.iso_ns) now live here, once.
    from ib_stream import clock
    from ib_stream.api import params
    from ib_stream.importers import values

    for module, name in [(clock, "iso"), (clock, "iso_ns"), (params, "parse_time"), (params, "now_iso")]:
        assert not hasattr(module, name), f"{module.__name__}.{name}"
    assert not hasattr(values, "iso_ns")
    assert values.parse_iso_ns("2025-01-10 14:30:00") == pd.Timestamp("2025-01-10T14:30Z").value
    assert {"iso_ns", "iso_us", "iso_compact", "iso_basic"} <= set(vars(times))
