"""Working-day calendar for Vietnamese administrative procedures.

A working day is 8 hours, in two periods (07:00–11:30 and 13:30–17:00, Asia/Ho_Chi_Minh), on
Monday–Friday unless it is a public holiday (`holidays.VN`) or an officially announced day off,
plus officially announced make-up working days (usually Saturdays). The official announcements
live in a data file (`workflows/calendar/vn-official-days.yaml`) that an operator edits when the
government publishes next year's swaps; the library alone cannot know them in advance.

Arithmetic is done on a "working position": (working day, microseconds of work already done
that day). All conversions go through local wall-clock time; Vietnam has had a fixed UTC+07:00
offset without DST since 1975, so wall-clock differences are real elapsed time.

Nothing is read or computed at import time: holidays are computed lazily, one year at a time,
and cached per calendar instance.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import MAXYEAR, MINYEAR, date, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

import yaml

__all__ = [
    "VN_TZ",
    "WORKDAY_HOURS",
    "CalendarDataError",
    "OfficialDay",
    "WorkingCalendar",
]

VN_TZ = ZoneInfo("Asia/Ho_Chi_Minh")
WORKDAY_HOURS = 8

OfficialDayKind = Literal["day_off", "working_day"]
_KINDS: frozenset[str] = frozenset({"day_off", "working_day"})

# Everything internal is in integer microseconds so that sub-second inputs survive exactly and
# add/subtract round-trips are exact.
_US = 1_000_000
_HOUR = 3600 * _US
_DAY_START = 7 * _HOUR
_MORNING_END = 11 * _HOUR + 30 * 60 * _US
_AFTERNOON_START = 13 * _HOUR + 30 * 60 * _US
_DAY_END = 17 * _HOUR
_MORNING_LEN = _MORNING_END - _DAY_START
_WORKDAY = _MORNING_LEN + (_DAY_END - _AFTERNOON_START)
assert _WORKDAY == WORKDAY_HOURS * _HOUR

_DEFAULT_DATA = ("calendar", "vn-official-days.yaml")
_ALLOWED_KEYS = frozenset({"date", "kind", "basis", "unconfirmed"})
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class CalendarDataError(ValueError):
    """The official-days data file (or an explicit list of days) is malformed."""


@dataclass(frozen=True)
class OfficialDay:
    """One official announcement: an extra day off or a make-up working day."""

    day: date
    kind: OfficialDayKind
    basis: str
    unconfirmed: bool = False


@dataclass(frozen=True, slots=True)
class _Year:
    first: int  # ordinal of 1 January
    flags: bytes  # flags[ordinal - first] == 1 on working days
    days: tuple[int, ...]  # ordinals of working days, ascending


def _local(t: datetime, name: str = "t") -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {t!r}")
    return t.astimezone(VN_TZ)


def _time_of_day(t: datetime) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * _US + t.microsecond


def _worked_by(tod: int) -> int:
    """Working microseconds already elapsed at local time-of-day `tod` on a working day."""
    if tod <= _DAY_START:
        return 0
    if tod <= _MORNING_END:
        return tod - _DAY_START
    if tod <= _AFTERNOON_START:
        return _MORNING_LEN
    if tod <= _DAY_END:
        return _MORNING_LEN + tod - _AFTERNOON_START
    return _WORKDAY


def _at(ordinal: int, tod: int) -> datetime:
    d = date.fromordinal(ordinal)
    seconds, micro = divmod(tod, _US)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return datetime(d.year, d.month, d.day, hour, minute, second, micro, tzinfo=VN_TZ)


def _to_micro(seconds: float, what: str) -> int:
    if isinstance(seconds, int):
        return seconds * _US
    if not math.isfinite(seconds):
        raise ValueError(f"{what} must be finite, got {seconds!r}")
    return round(seconds * _US)


class WorkingCalendar:
    """Working days and working-time arithmetic for processing deadlines."""

    def __init__(
        self,
        official_days: Iterable[OfficialDay] = (),
        *,
        use_public_holidays: bool = True,
    ) -> None:
        by_day: dict[date, OfficialDay] = {}
        for od in official_days:
            if od.kind not in _KINDS:
                raise CalendarDataError(f"unknown kind {od.kind!r} for official day {od.day}")
            previous = by_day.get(od.day)
            if previous is not None and previous.kind != od.kind:
                raise CalendarDataError(
                    f"official day {od.day} is both {previous.kind!r} and {od.kind!r}"
                )
            by_day[od.day] = od
        self._official: Mapping[date, OfficialDay] = by_day
        self._use_public_holidays = use_public_holidays
        self._years: dict[int, _Year] = {}

    @property
    def official_days(self) -> tuple[OfficialDay, ...]:
        return tuple(sorted(self._official.values(), key=lambda od: od.day))

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: Path | None = None) -> WorkingCalendar:
        """Calendar with the public holidays plus the official days listed in a YAML file.

        Without `path`, the file shipped in `workflows/calendar/` is used.
        """
        if path is None:
            resource = (
                resources.files("workflows").joinpath(_DEFAULT_DATA[0]).joinpath(_DEFAULT_DATA[1])
            )
            where = str(resource)
            try:
                text = resource.read_text(encoding="utf-8")
            except OSError as exc:
                raise CalendarDataError(f"{where}: cannot read: {exc}") from exc
        else:
            where = str(path)
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise CalendarDataError(f"{where}: cannot read: {exc}") from exc
        return cls(parse_official_days(text, where))

    # ------------------------------------------------------------ day lookup

    def _year(self, year: int) -> _Year:
        cached = self._years.get(year)
        if cached is not None:
            return cached
        if not MINYEAR <= year <= MAXYEAR:
            raise OverflowError(f"working-day arithmetic left the supported years ({year})")
        first = date(year, 1, 1).toordinal()
        last = date(year, 12, 31).toordinal()
        public: Any = ()
        if self._use_public_holidays:
            # Imported here: `holidays` is large and only needed once per year.
            import holidays

            public = holidays.country_holidays("VN", years=year)
        flags = bytearray(last - first + 1)
        for o in range(first, last + 1):
            d = date.fromordinal(o)
            official = self._official.get(d)
            if official is not None:
                working = official.kind == "working_day"
            else:
                working = d.weekday() < 5 and d not in public
            flags[o - first] = working
        built = _Year(
            first=first,
            flags=bytes(flags),
            days=tuple(o for o in range(first, last + 1) if flags[o - first]),
        )
        self._years[year] = built
        return built

    def _is_working(self, ordinal: int, year: int) -> bool:
        y = self._year(year)
        return bool(y.flags[ordinal - y.first])

    def _next_working(self, ordinal: int, year: int) -> int:
        """First working day on or after `ordinal` (which lies in `year`)."""
        y = self._year(year)
        i = bisect_left(y.days, ordinal)
        while i >= len(y.days):
            year += 1
            y = self._year(year)
            i = 0
        return y.days[i]

    def _shift(self, ordinal: int, year: int, k: int) -> int:
        """The working day `k` working days away from working day `ordinal` (in `year`)."""
        y = self._year(year)
        i = bisect_left(y.days, ordinal) + k
        while i >= len(y.days):
            i -= len(y.days)
            year += 1
            y = self._year(year)
        while i < 0:
            year -= 1
            y = self._year(year)
            i += len(y.days)
        return y.days[i]

    def _count(self, lo: int, lo_year: int, hi: int, hi_year: int) -> int:
        """Number of working days with ordinal in [lo, hi); requires lo <= hi."""
        y = self._year(lo_year)
        if lo_year == hi_year:
            return bisect_left(y.days, hi) - bisect_left(y.days, lo)
        n = len(y.days) - bisect_left(y.days, lo)
        for year in range(lo_year + 1, hi_year):
            n += len(self._year(year).days)
        return n + bisect_left(self._year(hi_year).days, hi)

    def _position(self, local: datetime) -> tuple[int, int, int]:
        """(working-day ordinal, its year, working µs done that day) equivalent to `local`.

        On a non-working day the position is the start of the next working day, which equals
        the end of the previous one; callers pick whichever boundary their convention needs.
        """
        o = local.toordinal()
        year = local.year
        if self._is_working(o, year):
            return o, year, _worked_by(_time_of_day(local))
        o = self._next_working(o, year)
        return o, date.fromordinal(o).year, 0

    # ------------------------------------------------------------- public API

    def is_working_day(self, day: date) -> bool:
        if isinstance(day, datetime):
            day = _local(day, "day").date()
        return self._is_working(day.toordinal(), day.year)

    def next_working_day(self, day: date) -> date:
        """`day` itself if it is a working day, else the first working day after it."""
        return date.fromordinal(self._next_working(day.toordinal(), day.year))

    def clock_start(self, t: datetime) -> datetime:
        """The instant the processing clock starts for something received at `t`."""
        local = _local(t)
        o = local.toordinal()
        year = local.year
        if self._is_working(o, year):
            tod = _time_of_day(local)
            if tod < _DAY_START:
                return _at(o, _DAY_START)
            if tod < _MORNING_END:
                return local
            if tod < _AFTERNOON_START:
                return _at(o, _AFTERNOON_START)
            if tod < _DAY_END:
                return local
            o += 1
            year = date.fromordinal(o).year
        return _at(self._next_working(o, year), _DAY_START)

    def add_working_seconds(self, start: datetime, seconds: float) -> datetime:
        """Move `seconds` of working time forward (or backward if negative) from `start`.

        Forward, the result is the earliest instant with that much work done since `start`, so
        it may be a period end (11:30, 17:00). Backward, it is the latest such instant, so it
        may be a period start (07:00, 13:30). Zero returns `start` unchanged (in VN_TZ).
        """
        return self._add(_local(start, "start"), _to_micro(seconds, "seconds"))

    def _add(self, local: datetime, delta: int) -> datetime:
        if delta == 0:
            return local
        o, year, done = self._position(local)
        k, rem = divmod(done + delta, _WORKDAY)
        forward = delta > 0
        if forward and rem == 0:
            # Finishing exactly at the end of a day's work: stay on that day at 17:00 rather
            # than jumping to 07:00 of the next working day.
            k -= 1
            rem = _WORKDAY
        if k:
            o = self._shift(o, year, k)
        if rem < _MORNING_LEN or (forward and rem == _MORNING_LEN):
            tod = _DAY_START + rem
        else:
            tod = _AFTERNOON_START + rem - _MORNING_LEN
        return _at(o, tod)

    def add_working_days(self, start: datetime, days: float) -> datetime:
        """`days` working days (of 8 hours) after the clock starts for `start`.

        A negative `days` moves backward from `start` itself ("one working day before the due
        time"); there is no clock start when counting backward.
        """
        delta = (
            days * _WORKDAY
            if isinstance(days, int)
            else _to_micro(days * WORKDAY_HOURS * 3600, "days")
        )
        local = _local(start, "start")
        if delta >= 0:
            return self._add(self.clock_start(local), delta)
        return self._add(local, delta)

    def working_seconds_between(self, a: datetime, b: datetime) -> int:
        """Working seconds in [a, b), negative if b < a; fractions truncate toward zero."""
        la = _local(a, "a")
        lb = _local(b, "b")
        if lb < la:
            return -self.working_seconds_between(b, a)
        oa, ya, da = self._position(la)
        ob, yb, db = self._position(lb)
        micro = self._count(oa, ya, ob, yb) * _WORKDAY + db - da
        return micro // _US

    def due_at(self, received_at: datetime, working_days: float) -> datetime:
        """Appointment time for a dossier received at `received_at`."""
        if working_days < 0:
            raise ValueError(f"working_days must be >= 0, got {working_days!r}")
        return self.add_working_days(received_at, working_days)


# ------------------------------------------------------------------- data file


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves dates as strings, so a bad date is reported with its entry."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_official_days(text: str, where: str = "<official days>") -> list[OfficialDay]:
    """Parse the official-days YAML document; errors name `where` and the offending entry."""
    try:
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise CalendarDataError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("days"), list):
        raise CalendarDataError(f"{where}: expected a mapping with a 'days' list")
    result: list[OfficialDay] = []
    seen: dict[date, int] = {}
    for index, raw in enumerate(cast(list[object], doc["days"]), start=1):
        label = f"{where}: entry {index}"
        if not isinstance(raw, dict):
            raise CalendarDataError(f"{label}: expected a mapping, got {raw!r}")
        entry = cast(dict[str, object], raw)
        label = f"{label} (date {entry.get('date')!r})"
        unknown = set(entry) - _ALLOWED_KEYS
        if unknown:
            raise CalendarDataError(f"{label}: unknown keys {sorted(map(str, unknown))}")
        raw_date = entry.get("date")
        if not isinstance(raw_date, str) or not _ISO_DATE.match(raw_date):
            raise CalendarDataError(f"{label}: date must be YYYY-MM-DD")
        try:
            day = date.fromisoformat(raw_date)
        except ValueError as exc:
            raise CalendarDataError(f"{label}: invalid date: {exc}") from exc
        kind = entry.get("kind")
        if kind not in _KINDS:
            raise CalendarDataError(
                f"{label}: unknown kind {kind!r}, expected one of {sorted(_KINDS)}"
            )
        basis = entry.get("basis")
        if not isinstance(basis, str) or not basis.strip():
            raise CalendarDataError(f"{label}: 'basis' (legal basis / source) is required")
        unconfirmed = entry.get("unconfirmed", False)
        if not isinstance(unconfirmed, bool):
            raise CalendarDataError(f"{label}: 'unconfirmed' must be true or false")
        if day in seen:
            raise CalendarDataError(f"{label}: same date as entry {seen[day]}")
        seen[day] = index
        result.append(
            OfficialDay(
                day=day,
                kind=cast(OfficialDayKind, kind),
                basis=" ".join(basis.split()),
                unconfirmed=unconfirmed,
            )
        )
    return result
