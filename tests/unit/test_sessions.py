"""MarketSessions: session windows from exchange calendars — DST, holidays, early closes, weekends, CME Globex."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import itertools
import re
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import exchange_calendars as xc
import pandas as pd
import pytest

from ib_stream.calendars import SESSION_TYPES, Session
from ib_stream.domain import Contract
from ib_stream.errors import NotFoundError, ValidationError
from ib_stream.storage import MarketSessions

NY = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
MINUTE = 60 * 1_000_000_000


def ns(text: str) -> int:
    """UTC ns of an ISO time with an offset."""
    return int(pd.Timestamp(text).tz_convert("UTC").value)


def ny(text: str) -> int:
    return int(pd.Timestamp(text).tz_localize(NY).value)


def ct(text: str) -> int:
    return int(pd.Timestamp(text).tz_localize(CHICAGO).value)


def window(session: Session) -> tuple[int, int]:
    return session.start_ns, session.end_ns


@pytest.fixture(scope="module")
def nyse() -> MarketSessions:
    return MarketSessions()


@pytest.fixture(scope="module")
def cme() -> MarketSessions:
    return MarketSessions("CMES")


# ---- DST --------------------------------------------------------------------------------------------


def test_dst_start_weekend_us_equity(nyse: MarketSessions) -> None:
    assert window(nyse.on("2025-03-07")) == (ns("2025-03-07T14:30Z"), ns("2025-03-07T21:00Z"))  # EST
    with pytest.raises(NotFoundError, match="2025-03-09"):
        nyse.on("2025-03-09")  # the Sunday clocks change
    monday = nyse.on(dt.date(2025, 3, 10))
    assert window(monday) == (ns("2025-03-10T13:30Z"), ns("2025-03-10T20:00Z"))  # EDT
    assert monday.start.isoformat() == "2025-03-10T09:30:00-04:00"
    assert window(nyse.on("2025-03-10", "pre_market")) == (ns("2025-03-10T08:00Z"), ns("2025-03-10T13:30Z"))
    assert window(nyse.on("2025-03-10", "after_hours")) == (ns("2025-03-10T20:00Z"), ns("2025-03-11T00:00Z"))
    # Sunday 20:00 EDT (the first evening of summer time) -> Monday 04:00 EDT.
    assert window(nyse.on("2025-03-10", "overnight")) == (ns("2025-03-10T00:00Z"), ns("2025-03-10T08:00Z"))


def test_dst_end_weekend_us_equity(nyse: MarketSessions) -> None:
    assert window(nyse.on("2025-10-31")) == (ns("2025-10-31T13:30Z"), ns("2025-10-31T20:00Z"))  # EDT
    with pytest.raises(NotFoundError, match="2025-11-02"):
        nyse.on("2025-11-02")
    assert window(nyse.on("2025-11-03")) == (ns("2025-11-03T14:30Z"), ns("2025-11-03T21:00Z"))  # EST
    assert window(nyse.on("2025-11-03", "extended")) == (ns("2025-11-03T09:00Z"), ns("2025-11-04T01:00Z"))
    assert window(nyse.on("2025-11-03", "overnight")) == (ns("2025-11-03T01:00Z"), ns("2025-11-03T09:00Z"))


def test_dst_weekends_cme(cme: MarketSessions) -> None:
    assert window(cme.on("2025-03-07")) == (ns("2025-03-06T23:00Z"), ns("2025-03-07T22:00Z"))  # CST
    assert window(cme.on("2025-03-10")) == (ns("2025-03-09T22:00Z"), ns("2025-03-10T21:00Z"))  # Sunday 17:00 CDT
    assert window(cme.on("2025-10-31")) == (ns("2025-10-30T22:00Z"), ns("2025-10-31T21:00Z"))  # CDT
    assert window(cme.on("2025-11-03")) == (ns("2025-11-02T23:00Z"), ns("2025-11-03T22:00Z"))  # Sunday 17:00 CST
    assert cme.on("2025-11-03").start.isoformat() == "2025-11-02T17:00:00-06:00"


# ---- holidays and early closes -----------------------------------------------------------------------


def test_holiday_has_no_session_and_current_is_the_day_before(nyse: MarketSessions) -> None:
    for session_type in SESSION_TYPES:
        with pytest.raises(NotFoundError, match=r"2025-07-04.*holiday") as caught:
            nyse.on("2025-07-04", session_type)
        assert caught.value.details["value"] == "2025-07-04"
    noon = ny("2025-07-04 12:00")
    assert nyse.current(noon).date == dt.date(2025, 7, 3)
    assert window(nyse.current(noon)) == (ns("2025-07-03T13:30Z"), ns("2025-07-03T17:00Z"))
    assert nyse.previous(noon).date == dt.date(2025, 7, 2)
    assert not nyse.is_open_at(noon)
    assert not nyse.is_open_at(noon, "extended")
    # No overnight session leads into the holiday; Monday's starts on Sunday evening.
    assert not nyse.is_open_at(ny("2025-07-03 22:00"), "overnight")
    assert window(nyse.on("2025-07-07", "overnight")) == (ny("2025-07-06 20:00"), ny("2025-07-07 04:00"))


def test_early_close(nyse: MarketSessions) -> None:
    regular = nyse.on("2025-07-03")
    assert regular.end.isoformat() == "2025-07-03T13:00:00-04:00"
    after = nyse.on("2025-07-03", "after_hours")
    assert after.start_ns == regular.end_ns == ns("2025-07-03T17:00Z")
    assert after.end.isoformat() == "2025-07-03T17:00:00-04:00"  # late trading ends at 17:00 on early-close days
    assert nyse.on("2025-07-03", "extended").end_ns == after.end_ns
    assert nyse.on("2025-07-03", "pre_market").start.isoformat() == "2025-07-03T04:00:00-04:00"
    assert nyse.is_open_at(ny("2025-07-03 12:59:59"))
    assert not nyse.is_open_at(ny("2025-07-03 13:00"))
    assert nyse.is_open_at(ny("2025-07-03 13:00"), "after_hours")
    assert not nyse.is_open_at(ny("2025-07-03 17:00"), "after_hours")
    # An ordinary day's after-hours runs to 20:00.
    assert nyse.on("2025-07-02", "after_hours").end.isoformat() == "2025-07-02T20:00:00-04:00"


def test_cme_holiday_and_early_close_come_from_the_calendar(cme: MarketSessions) -> None:
    july4 = cme.on("2025-07-04")  # Globex trades Thursday evening -> Friday noon
    assert (july4.start.isoformat(), july4.end.isoformat()) == (
        "2025-07-03T17:00:00-05:00",
        "2025-07-04T12:00:00-05:00",
    )
    assert not cme.is_open_at(ct("2025-07-04 12:30"))
    with pytest.raises(NotFoundError, match="2025-12-25"):
        cme.on("2025-12-25")
    assert cme.on("2025-12-26").start.isoformat() == "2025-12-25T17:00:00-06:00"


# ---- weekends: current and previous ----------------------------------------------------------------------


@pytest.mark.parametrize("when", ["2025-07-11 20:01", "2025-07-12 12:00", "2025-07-13 23:59", "2025-07-14 09:29"])
def test_weekend_current_is_friday_previous_is_thursday(nyse: MarketSessions, when: str) -> None:
    assert nyse.current(ny(when)).date == dt.date(2025, 7, 11)
    assert nyse.previous(ny(when)).date == dt.date(2025, 7, 10)
    assert not nyse.current(ny(when)).is_open(ny(when))


def test_current_in_progress_and_other_session_types(nyse: MarketSessions) -> None:
    monday = ny("2025-07-07 10:00")
    current = nyse.current(monday)
    assert current.date == dt.date(2025, 7, 7)
    assert current.is_open(monday) and current.in_progress(monday)
    assert nyse.previous(monday).date == dt.date(2025, 7, 3)  # across the holiday and the weekend
    saturday = ny("2025-07-12 12:00")
    for session_type in ("pre_market", "after_hours", "extended"):
        assert nyse.current(saturday, session_type).date == dt.date(2025, 7, 11)
        assert nyse.previous(saturday, session_type).date == dt.date(2025, 7, 10)
    # Overnight leading into Monday is in progress on Sunday night; before it, Friday's is the latest.
    assert nyse.current(ny("2025-07-13 21:00"), "overnight").date == dt.date(2025, 7, 14)
    assert nyse.current(saturday, "overnight").date == dt.date(2025, 7, 11)
    # Before Monday's open, the most recent regular session is Friday's; pre-market is in progress.
    early = ny("2025-07-14 08:00")
    assert nyse.current(early).date == dt.date(2025, 7, 11)
    assert nyse.current(early, "pre_market").is_open(early)


# ---- CME Globex: the daily break and the Sunday open ----------------------------------------------------------


def test_cme_daily_break(cme: MarketSessions) -> None:
    assert cme.is_open_at(ct("2025-07-08 15:59"))
    assert not cme.is_open_at(ct("2025-07-08 16:00"))
    assert not cme.is_open_at(ct("2025-07-08 16:30"))
    assert not cme.is_open_at(ct("2025-07-08 16:59:59"))
    assert cme.is_open_at(ct("2025-07-08 17:00"))
    after_break = ct("2025-07-08 17:01")
    assert cme.is_open_at(after_break)
    assert cme.current(after_break).date == dt.date(2025, 7, 9)  # the evening belongs to the next trading date
    assert cme.previous(after_break).date == dt.date(2025, 7, 8)
    in_break = ct("2025-07-08 16:30")
    assert cme.current(in_break).date == dt.date(2025, 7, 8)
    assert not cme.current(in_break).in_progress(in_break)
    tuesday = cme.on("2025-07-08")
    assert (tuesday.start.isoformat(), tuesday.end.isoformat()) == (
        "2025-07-07T17:00:00-05:00",
        "2025-07-08T16:00:00-05:00",
    )


def test_cme_sunday_open(cme: MarketSessions) -> None:
    assert not cme.is_open_at(ct("2025-07-11 16:00"))  # Friday's close
    assert not cme.is_open_at(ct("2025-07-12 12:00"))  # Saturday
    assert not cme.is_open_at(ct("2025-07-13 16:59"))
    sunday_open = ct("2025-07-13 17:00")
    assert cme.is_open_at(sunday_open)
    assert cme.current(sunday_open).date == dt.date(2025, 7, 14)
    assert cme.current(sunday_open).start_ns == sunday_open
    assert cme.current(ct("2025-07-13 12:00")).date == dt.date(2025, 7, 11)
    assert cme.previous(ct("2025-07-13 12:00")).date == dt.date(2025, 7, 10)


def test_cme_session_types(cme: MarketSessions) -> None:
    assert cme.session_types == ("regular", "extended")
    assert cme.on("2025-07-08", "extended") == dataclasses.replace(cme.on("2025-07-08"), session_type="extended")
    for session_type in ("pre_market", "after_hours", "overnight"):
        with pytest.raises(ValidationError, match=f"{session_type} is not available for calendar CMES") as caught:
            cme.on("2025-07-08", session_type)
        assert caught.value.details["field"] == "session_type"
        with pytest.raises(ValidationError):
            cme.is_open_at(ct("2025-07-08 10:00"), session_type)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # exchange_calendars on pandas 3
def test_cme_sessions_follow_the_calendar_with_the_16_00_halt(cme: MarketSessions) -> None:
    calendar = xc.get_calendar("CMES", start="2024-01-01", end="2026-12-31")
    schedule = calendar.schedule
    for day, row in schedule.iterrows():
        session = cme.on(day.date())
        halt = pd.Timestamp(day.date().isoformat() + " 16:00").tz_localize(CHICAGO)
        assert session.start_ns == row["open"].value
        assert session.end_ns == min(row["close"], halt).value


# ---- US equity extended hours -----------------------------------------------------------------------------


def test_extended_hours_boundaries_are_contiguous(nyse: MarketSessions) -> None:
    day = "2025-07-08"
    overnight, pre, regular, after, extended = (
        nyse.on(day, t) for t in ("overnight", "pre_market", "regular", "after_hours", "extended")
    )
    assert overnight.start_ns == ny("2025-07-07 20:00")
    assert overnight.end_ns == pre.start_ns == ny("2025-07-08 04:00")
    assert pre.end_ns == regular.start_ns == ny("2025-07-08 09:30")
    assert regular.end_ns == after.start_ns == ny("2025-07-08 16:00")
    assert after.end_ns == ny("2025-07-08 20:00") == nyse.on("2025-07-09", "overnight").start_ns
    assert window(extended) == (pre.start_ns, after.end_ns)
    # Start inclusive, end exclusive.
    assert nyse.is_open_at(pre.start_ns, "pre_market") and not nyse.is_open_at(pre.end_ns, "pre_market")
    assert nyse.is_open_at(regular.start_ns) and not nyse.is_open_at(regular.start_ns - 1)
    assert nyse.is_open_at(after.end_ns - 1, "after_hours") and not nyse.is_open_at(after.end_ns, "after_hours")
    assert nyse.is_open_at(ny("2025-07-09 02:00"), "overnight")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # exchange_calendars on pandas 3
def test_regular_sessions_are_the_calendars(nyse: MarketSessions) -> None:
    schedule = xc.get_calendar("XNYS", start="2024-01-01", end="2026-12-31").schedule
    for day, row in schedule.iterrows():
        assert window(nyse.on(day.date())) == (row["open"].value, row["close"].value)


def test_is_open_at_agrees_with_the_sessions(nyse: MarketSessions, cme: MarketSessions) -> None:
    start, end = ny("2025-06-27 00:00"), ny("2025-07-09 00:00")
    for sessions, types in ((nyse, SESSION_TYPES), (cme, ("regular",))):
        for session_type in types:
            held = sessions.between(start, end, session_type)
            assert held and all(a.end_ns <= b.start_ns for a, b in itertools.pairwise(held))
            for ts in range(start, end, 7 * MINUTE):
                expected = any(s.is_open(ts) for s in held)
                assert sessions.is_open_at(ts, session_type) == expected, (session_type, ts)


def test_lunch_breaks_of_other_calendars() -> None:
    hkex = MarketSessions("XHKG")
    session = hkex.on("2025-07-03")
    assert session.timezone == "Asia/Hong_Kong"
    assert session.breaks == ((ns("2025-07-03T12:00+08:00"), ns("2025-07-03T13:00+08:00")),)
    assert hkex.is_open_at(ns("2025-07-03T11:59+08:00"))
    assert not hkex.is_open_at(ns("2025-07-03T12:30+08:00"))
    assert not session.is_open(ns("2025-07-03T12:30+08:00")) and session.in_progress(ns("2025-07-03T12:30+08:00"))
    assert hkex.is_open_at(ns("2025-07-03T13:00+08:00"))
    assert hkex.session_types == ("regular", "extended")


# ---- API surface ------------------------------------------------------------------------------------------


def test_seed_signatures(nyse: MarketSessions) -> None:
    start, end = nyse.get_session_boundaries("2025-07-03")
    assert (start, end) == (dt.datetime(2025, 7, 3, 9, 30, tzinfo=NY), dt.datetime(2025, 7, 3, 13, 0, tzinfo=NY))
    assert start.tzinfo == NY
    start, end = nyse.get_session_boundaries(dt.date(2025, 3, 10), "pre_market", "UTC")
    assert start.isoformat() == "2025-03-10T08:00:00+00:00" and end.isoformat() == "2025-03-10T13:30:00+00:00"
    start, _ = MarketSessions("CMES").get_session_boundaries("2025-07-08", timezone=None)
    assert start.isoformat() == "2025-07-07T17:00:00-05:00"
    before = time.time_ns()
    current = nyse.get_current_session("extended")
    after = time.time_ns()
    assert current in {nyse.current(before, "extended").boundaries(), nyse.current(after, "extended").boundaries()}
    assert current[0] <= dt.datetime.now(NY) and current[0].tzinfo == NY


def test_bad_input_names_field_and_value(nyse: MarketSessions) -> None:
    cases = [
        (lambda: nyse.on("2025-02-30"), "date", "2025-02-30"),
        (lambda: nyse.on("July 3"), "date", "July 3"),
        (lambda: nyse.on("1985-01-02"), "date", "1985-01-02"),
        (lambda: nyse.on("2025-07-03", "lunch"), "session_type", "lunch"),
        (lambda: nyse.is_open_at(0, "lunch"), "session_type", "lunch"),
        (lambda: nyse.get_session_boundaries("2025-07-03", timezone="Mars/Base"), "timezone", "Mars/Base"),
        (lambda: MarketSessions("NOPE"), "calendar", "NOPE"),
    ]
    for call, field, value in cases:
        with pytest.raises(ValidationError) as caught:
            call()
        assert caught.value.details["field"] == field
        assert caught.value.details["value"] == value
        assert value in caught.value.message
    with pytest.raises(NotFoundError):
        nyse.current(ns("1989-06-01T00:00Z"))
    with pytest.raises(NotFoundError):
        nyse.previous(nyse.on("1990-01-02").start_ns)


def test_contract_aware_and_aliases() -> None:
    future = MarketSessions.for_contract(Contract(con_id=1, symbol="ES", sec_type="FUT", calendar="CMES"))
    assert (future.calendar, future.kind, future.timezone) == ("CMES", "cme_globex", "America/Chicago")
    nasdaq = MarketSessions.for_contract(Contract(con_id=2, symbol="AAPL", calendar="XNAS"))
    assert nasdaq.kind == "us_equity" and nasdaq.calendar == "XNAS"
    session = nasdaq.on("2025-07-03", "after_hours")
    assert session.calendar == "XNAS"
    assert window(session) == window(MarketSessions("XNYS").on("2025-07-03", "after_hours"))
    assert MarketSessions("xnys").calendar == "xnys" and MarketSessions("xnys").kind == "us_equity"


def test_session_is_immutable_and_between(nyse: MarketSessions) -> None:
    session = nyse.on("2025-07-03")
    with pytest.raises(dataclasses.FrozenInstanceError):
        session.start_ns = 0  # type: ignore[misc]
    week = nyse.between(ny("2025-06-30 00:00"), ny("2025-07-05 00:00"))
    assert [s.date.isoformat() for s in week] == ["2025-06-30", "2025-07-01", "2025-07-02", "2025-07-03"]
    # A range that starts inside a session includes it.
    assert nyse.between(ny("2025-07-03 12:00"), ny("2025-07-03 12:01"))[0].date == dt.date(2025, 7, 3)
    assert nyse.between(ny("2025-07-04 00:00"), ny("2025-07-07 09:30")) == []


# ---- the concept page's examples run and print what their comments say ---------------------------------------

DOCS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "concepts" / "sessions.md"
_PRINT = re.compile(r"^\s*print\(.*\)(?:\s+#\s*(?P<said>.*))?$")


def test_docs_examples_print_what_they_say() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS_PAGE.read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        said = [m["said"] for line in block.splitlines() if (m := _PRINT.match(line))]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(DOCS_PAGE), "exec"), {})
        printed = out.getvalue().splitlines()
        assert len(printed) == len(said)
        for line, comment in zip(printed, said, strict=True):
            if comment is None:
                continue
            expected = re.sub(r"\s+\([^()]*\)$", "", comment)  # a trailing "(remark)" is not output
            if expected.startswith("... "):
                assert line.endswith(expected[4:]), (line, comment)
            else:
                assert line.startswith(expected), (line, comment)
