"""Working-day calendar: hand-computed deadlines around holidays, conventions, properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.calendar import (
    VN_TZ,
    WORKDAY_HOURS,
    CalendarDataError,
    OfficialDay,
    WorkingCalendar,
)

DAY = WORKDAY_HOURS * 3600


@cache
def cal() -> WorkingCalendar:
    return WorkingCalendar.load()


def vn(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=VN_TZ)


# ------------------------------------------------------------------ the data


def test_shipped_data_file_loads_and_every_entry_has_a_basis() -> None:
    days = cal().official_days
    assert days
    assert all(od.basis.strip() for od in days)
    by_day = {od.day: od for od in days}
    assert by_day[date(2025, 4, 26)].kind == "working_day"
    assert by_day[date(2025, 5, 2)].kind == "day_off"


@pytest.mark.parametrize(
    ("day", "working"),
    [
        # Tết 2025: 27–31 Jan off, then 3 Feb back at work.
        (date(2025, 1, 24), True),
        (date(2025, 1, 27), False),
        (date(2025, 1, 31), False),
        (date(2025, 2, 3), True),
        # Tết Bính Ngọ 2026: 16–20 Feb off.
        (date(2026, 2, 13), True),
        (date(2026, 2, 16), False),
        (date(2026, 2, 17), False),
        (date(2026, 2, 20), False),
        (date(2026, 2, 23), True),
        # Reunification Day 2025 with the swap: Sat 26 Apr worked, Fri 2 May off.
        (date(2025, 4, 26), True),
        (date(2025, 4, 29), True),
        (date(2025, 4, 30), False),
        (date(2025, 5, 1), False),
        (date(2025, 5, 2), False),
        (date(2025, 5, 3), False),
        (date(2025, 5, 5), True),
        # National Day 2025: Mon 1 and Tue 2 Sep.
        (date(2025, 9, 1), False),
        (date(2025, 9, 2), False),
        (date(2025, 9, 3), True),
        # Plain weekend.
        (date(2025, 3, 8), False),
        (date(2025, 3, 9), False),
    ],
)
def test_is_working_day(day: date, working: bool) -> None:
    assert cal().is_working_day(day) is working


def test_official_entries_override_the_library() -> None:
    c = WorkingCalendar(
        [
            OfficialDay(date(2026, 2, 20), "working_day", "test: Friday of Tết made a workday"),
            OfficialDay(date(2026, 3, 4), "day_off", "test: extra day off"),
        ]
    )
    assert c.is_working_day(date(2026, 2, 20))
    assert not c.is_working_day(date(2026, 3, 4))
    assert not c.is_working_day(date(2026, 2, 19))


def test_without_public_holidays_only_weekends_and_official_days_count() -> None:
    c = WorkingCalendar(use_public_holidays=False)
    assert c.is_working_day(date(2026, 2, 17))
    assert not c.is_working_day(date(2026, 2, 21))


def test_conflicting_official_days_are_rejected() -> None:
    with pytest.raises(CalendarDataError, match="2025-05-02"):
        WorkingCalendar(
            [
                OfficialDay(date(2025, 5, 2), "day_off", "a"),
                OfficialDay(date(2025, 5, 2), "working_day", "b"),
            ]
        )


# ------------------------------------------------------------- due dates


def test_tet_2026_friday_before_plus_one_day() -> None:
    assert cal().due_at(vn(2026, 2, 13, 9), 1) == vn(2026, 2, 23, 9)


def test_tet_2026_thursday_before_plus_three_days() -> None:
    # Fri 13 Feb is day 1, then 16–22 Feb are skipped: Mon 23 is day 2, Tue 24 day 3.
    assert cal().due_at(vn(2026, 2, 12, 9), 3) == vn(2026, 2, 24, 9)
    assert cal().due_at(vn(2026, 2, 12, 14), 2) == vn(2026, 2, 23, 14)


def test_tet_2026_received_friday_evening_starts_after_tet() -> None:
    assert cal().clock_start(vn(2026, 2, 13, 17, 30)) == vn(2026, 2, 23, 7)
    # A full day from 07:00 ends at 17:00 the same day, not 07:00 the next.
    assert cal().due_at(vn(2026, 2, 13, 17, 30), 1) == vn(2026, 2, 23, 17)


def test_substituted_day_off_2_may_2025() -> None:
    # 30 Apr, 1 May holidays; 2 May swapped off; 3–4 May weekend.
    assert cal().due_at(vn(2025, 4, 29, 9), 1) == vn(2025, 5, 5, 9)


def test_make_up_saturday_26_april_2025_counts() -> None:
    assert cal().due_at(vn(2025, 4, 25, 9), 1) == vn(2025, 4, 26, 9)
    assert cal().clock_start(vn(2025, 4, 25, 17, 30)) == vn(2025, 4, 26, 7)
    # Sat 26 is day 1; Sun 27 is skipped; Mon 28, a plain working day, is day 2.
    assert cal().due_at(vn(2025, 4, 25, 9), 2) == vn(2025, 4, 28, 9)


def test_year_boundary_skips_new_year() -> None:
    # Thu 1 Jan 2026 is a holiday.
    assert cal().due_at(vn(2025, 12, 31, 16), 1) == vn(2026, 1, 2, 16)
    assert cal().add_working_days(vn(2026, 1, 2, 9), -1) == vn(2025, 12, 31, 9)


def test_fractional_days() -> None:
    # Half a day = 4 h: 09:00–11:30 is 2.5 h, then 13:30 + 1.5 h.
    assert cal().due_at(vn(2025, 3, 10, 9), 0.5) == vn(2025, 3, 10, 15)


def test_due_at_rejects_negative_days() -> None:
    with pytest.raises(ValueError):
        cal().due_at(vn(2025, 3, 10, 9), -1)


# ------------------------------------------------------------ clock start


def test_friday_evening_receipt_starts_monday_morning() -> None:
    assert cal().clock_start(vn(2025, 3, 7, 17, 30)) == vn(2025, 3, 10, 7)
    # Exactly 17:00 is already outside the afternoon period.
    assert cal().clock_start(vn(2025, 3, 7, 17)) == vn(2025, 3, 10, 7)


def test_weekend_receipt_starts_monday_morning() -> None:
    assert cal().clock_start(vn(2025, 3, 8, 10)) == vn(2025, 3, 10, 7)


def test_lunch_time_receipt_starts_at_13_30() -> None:
    assert cal().clock_start(vn(2025, 3, 12, 12, 15)) == vn(2025, 3, 12, 13, 30)
    assert cal().clock_start(vn(2025, 3, 12, 11, 30)) == vn(2025, 3, 12, 13, 30)
    # 13:30 + 8 working hours: 3.5 h that afternoon, 4.5 h the next morning, which ends at
    # 11:30. A forward move stops at a period end, so it is 11:30, not 13:30.
    assert cal().due_at(vn(2025, 3, 12, 12, 15), 1) == vn(2025, 3, 13, 11, 30)
    assert cal().due_at(vn(2025, 3, 12, 12, 15), 1.25) == vn(2025, 3, 13, 15, 30)


def test_before_seven_receipt_starts_at_seven() -> None:
    assert cal().clock_start(vn(2025, 3, 12, 6, 10)) == vn(2025, 3, 12, 7)
    assert cal().due_at(vn(2025, 3, 12, 6, 10), 1) == vn(2025, 3, 12, 17)


def test_inside_working_period_clock_starts_immediately() -> None:
    t = vn(2025, 3, 12, 9, 41, 7)
    assert cal().clock_start(t) == t
    assert cal().clock_start(vn(2025, 3, 12, 7)) == vn(2025, 3, 12, 7)


def test_other_timezones_are_converted_and_output_is_vn() -> None:
    # 10:30 UTC = 17:30 in Vietnam, on Friday 7 March 2025.
    start = cal().clock_start(datetime(2025, 3, 7, 10, 30, tzinfo=UTC))
    assert start == vn(2025, 3, 10, 7)
    assert start.tzinfo is VN_TZ
    due = cal().due_at(datetime(2025, 3, 10, 2, tzinfo=UTC), 1)  # 09:00 VN
    assert due.tzinfo is VN_TZ
    assert (due.hour, due.day) == (9, 11)


def test_naive_datetimes_are_rejected() -> None:
    naive = datetime(2025, 3, 10, 9)
    c = cal()
    with pytest.raises(ValueError, match="timezone-aware"):
        c.clock_start(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        c.add_working_seconds(naive, 10)
    with pytest.raises(ValueError, match="timezone-aware"):
        c.add_working_days(naive, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        c.due_at(naive, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        c.working_seconds_between(naive, vn(2025, 3, 10, 9))


# ------------------------------------------------------ period conventions


def test_forward_add_stops_at_period_end() -> None:
    assert cal().add_working_seconds(vn(2025, 3, 10, 10, 30), 3600) == vn(2025, 3, 10, 11, 30)
    assert cal().add_working_seconds(vn(2025, 3, 10, 16), 3600) == vn(2025, 3, 10, 17)
    assert cal().add_working_seconds(vn(2025, 3, 10, 16), 3601) == vn(2025, 3, 11, 7, 0, 1)


def test_backward_add_stops_at_period_start() -> None:
    assert cal().add_working_seconds(vn(2025, 3, 10, 14, 30), -3600) == vn(2025, 3, 10, 13, 30)
    assert cal().add_working_seconds(vn(2025, 3, 10, 9), -7200) == vn(2025, 3, 10, 7)


def test_negative_add_crosses_the_weekend() -> None:
    # Mon 10 Mar 2025 08:00 minus 2 h: one hour back to 07:00, one hour of Friday afternoon.
    assert cal().add_working_seconds(vn(2025, 3, 10, 8), -7200) == vn(2025, 3, 7, 16)
    assert cal().add_working_days(vn(2025, 3, 10, 9), -1) == vn(2025, 3, 7, 9)
    # Across the lunch break on the way back.
    assert cal().add_working_seconds(vn(2025, 3, 10, 14), -3600) == vn(2025, 3, 10, 11)


def test_negative_add_crosses_tet_2026() -> None:
    assert cal().add_working_days(vn(2026, 2, 23, 9), -1) == vn(2026, 2, 13, 9)


def test_zero_add_is_identity() -> None:
    t = vn(2025, 3, 8, 12)  # a Saturday
    assert cal().add_working_seconds(t, 0) == t


# ---------------------------------------------------------- between


def test_working_seconds_between_hand_computed() -> None:
    c = cal()
    assert c.working_seconds_between(vn(2025, 3, 7, 16), vn(2025, 3, 10, 8)) == 7200
    assert c.working_seconds_between(vn(2025, 3, 10, 8), vn(2025, 3, 7, 16)) == -7200
    assert c.working_seconds_between(vn(2025, 3, 12, 11), vn(2025, 3, 12, 14)) == 3600
    assert c.working_seconds_between(vn(2025, 3, 12, 12), vn(2025, 3, 12, 13)) == 0
    assert c.working_seconds_between(vn(2026, 2, 13, 16), vn(2026, 2, 23, 8)) == 7200
    assert c.working_seconds_between(vn(2025, 3, 10, 7), vn(2025, 3, 17, 7)) == 5 * DAY
    t = vn(2025, 3, 12, 9)
    assert c.working_seconds_between(t, t) == 0


def test_long_spans_cross_years() -> None:
    c = cal()
    start = vn(2024, 11, 4, 9)
    end = c.add_working_days(start, 600)
    assert end.year == 2027
    assert c.working_seconds_between(start, end) == 600 * DAY
    assert c.add_working_days(end, -600) == start


# ------------------------------------------------------------- properties

_ZONES = [UTC, VN_TZ, ZoneInfo("Europe/Paris"), timezone(timedelta(hours=-5, minutes=-30))]
aware = st.datetimes(
    min_value=datetime(2023, 6, 1),
    max_value=datetime(2027, 6, 1),
    timezones=st.sampled_from(_ZONES),
)
whole_seconds = aware.map(lambda d: d.replace(microsecond=0))
amounts = st.integers(min_value=0, max_value=120 * DAY)


@given(aware, amounts)
def test_add_then_measure_and_subtract_from_clock_start(s: datetime, n: int) -> None:
    c = cal()
    s0 = c.clock_start(s)
    end = c.add_working_seconds(s0, n)
    assert end.tzinfo is VN_TZ
    assert c.working_seconds_between(s0, end) == n
    # s0 is inside a working period (or at its start), the only instant with its position
    # that the backward convention can return, so the round trip is exact.
    assert c.add_working_seconds(end, -n) == s0


@given(aware, amounts)
def test_add_measures_exactly_from_any_instant(t: datetime, n: int) -> None:
    c = cal()
    assert c.working_seconds_between(t, c.add_working_seconds(t, n)) == n
    assert c.working_seconds_between(c.add_working_seconds(t, -n), t) == n


@given(aware, st.integers(min_value=0, max_value=60))
def test_add_working_days_is_seconds_from_clock_start(t: datetime, d: int) -> None:
    c = cal()
    assert c.add_working_days(t, d) == c.add_working_seconds(c.clock_start(t), d * DAY)


@given(aware)
def test_clock_start_properties(t: datetime) -> None:
    c = cal()
    s0 = c.clock_start(t)
    assert s0 >= t
    assert s0.tzinfo is VN_TZ
    assert c.is_working_day(s0.date())
    hm = (s0.hour, s0.minute)
    assert (7, 0) <= hm < (11, 30) or (13, 30) <= hm < (17, 0)
    assert c.working_seconds_between(t, s0) == 0
    assert c.clock_start(s0) == s0


@given(whole_seconds, whole_seconds, whole_seconds)
def test_between_is_antisymmetric_and_additive(a: datetime, b: datetime, x: datetime) -> None:
    c = cal()
    assert c.working_seconds_between(a, b) == -c.working_seconds_between(b, a)
    assert c.working_seconds_between(a, x) == c.working_seconds_between(
        a, b
    ) + c.working_seconds_between(b, x)
    if a <= b:
        # Never more working time than wall-clock time.
        assert 0 <= c.working_seconds_between(a, b) <= (b - a).total_seconds()


# -------------------------------------------------------- broken data files


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "official.yaml"
    path.write_text(body, encoding="utf-8")
    return path


GOOD_ENTRY = "  - {date: 2025-04-26, kind: working_day, basis: make-up Saturday}\n"


def test_load_explicit_file(tmp_path: Path) -> None:
    c = WorkingCalendar.load(_write(tmp_path, "days:\n" + GOOD_ENTRY))
    assert c.official_days == (OfficialDay(date(2025, 4, 26), "working_day", "make-up Saturday"),)
    assert c.is_working_day(date(2025, 4, 26))


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("  - {date: 2025-02-30, kind: day_off, basis: x}\n", "2025-02-30"),
        ("  - {date: 30/04/2025, kind: day_off, basis: x}\n", "YYYY-MM-DD"),
        ("  - {date: 2025-05-02, kind: holiday, basis: x}\n", "'holiday'"),
        ("  - {date: 2025-05-02, kind: day_off}\n", "basis"),
        ("  - {date: 2025-05-02, kind: day_off, basis: x, unconfirmed: maybe}\n", "unconfirmed"),
        ("  - {date: 2025-05-02, kind: day_off, basis: x, unconfirmd: true}\n", "unconfirmd"),
        ("  - {date: 2025-04-26, kind: day_off, basis: duplicate}\n", "same date as entry 1"),
        ("  - just a string\n", "expected a mapping"),
    ],
)
def test_broken_entry_names_file_and_entry(tmp_path: Path, entry: str, fragment: str) -> None:
    path = _write(tmp_path, "days:\n" + GOOD_ENTRY + entry)
    with pytest.raises(CalendarDataError) as info:
        WorkingCalendar.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "entry 2" in message
    assert fragment in message


@pytest.mark.parametrize("body", ["days: [unclosed\n", "- 2025-05-02\n", "days: nope\n"])
def test_broken_document_names_file(tmp_path: Path, body: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(CalendarDataError, match=r"official\.yaml"):
        WorkingCalendar.load(path)


def test_missing_file_names_file(tmp_path: Path) -> None:
    with pytest.raises(CalendarDataError, match=r"absent\.yaml"):
        WorkingCalendar.load(tmp_path / "absent.yaml")
