"""The service-quality indicators of Decision 766/QĐ-TTg (2022), defined once.

`dossier kpi`, the Prometheus gauges (`dossier.monitoring`) and the dashboard all read the figures
computed here: the store selects the facts of the dossiers of a period
(`engine.store.queries.dossier_facts`), and pure functions turn those facts into figures
(`tally`, `figures`, `report`), so the definitions can be checked by hand on a few rows.

Definitions, over a period [start, end) of business time:

- A dossier belongs to its **receiving agency** (the one-stop shop that accepted it, which also
  returns the result) at that agency's level (the procedure's receiving level). Reception-side
  indicators count dossiers *received* in the period; resolution-side ones, dossiers *finished*
  in it (resolved, returned, stopped or refused: the engine's `finished_at`).
- 2.1 on-time rate: finished no later than the appointment (`due_at`) over finished. The
  appointment already leaves supplementation out (the engine restarts or shifts it), and a
  dossier refused at reception never had one, so it cannot be late.
- 2.2 average processing time: working seconds (8-hour days, the deadline calendar) from
  reception to finish, minus the working seconds spent waiting for the applicant to supplement,
  over finished dossiers that were received.
- 3.3 online rate: received online (channel 2) over received.
- 3.6 online payment rate: paid online over received dossiers that paid a fee.
- 4.2 digitised rate and 4.5 VNeID rate: digitised / VNeID-authenticated over received.
- 5.4 satisfaction: 100% − overdue% − complaints%, over finished dossiers. No complaints source
  is connected yet, so complaints count as 0 and 5.4 equals 2.1 until one is.

A figure whose denominator is 0 is N/A (`None`), never 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta
from typing import Literal

from engine.calendar import VN_TZ, WorkingCalendar
from engine.procedures import Catalogue

Unit = Literal["ratio", "seconds"]
ONLINE_CHANNEL = 2


@dataclass(frozen=True, slots=True)
class Indicator:
    code: str  # Decision 766 numbering, e.g. "2.1"
    key: str  # the Prometheus label value: code and name, e.g. "2.1_on_time"
    title: str
    unit: Unit
    target: float | None = None  # the national target where the domain states one


ON_TIME = Indicator("2.1", "2.1_on_time", "on-time rate", "ratio")
PROCESSING_TIME = Indicator("2.2", "2.2_processing_time", "average processing time", "seconds")
ONLINE = Indicator("3.3", "3.3_online", "online rate", "ratio", target=0.5)
ONLINE_PAYMENT = Indicator("3.6", "3.6_online_payment", "online payment rate", "ratio")
DIGITISED = Indicator("4.2", "4.2_digitised", "digitised rate", "ratio", target=0.8)
VNEID = Indicator("4.5", "4.5_vneid", "VNeID-authenticated rate", "ratio")
SATISFACTION = Indicator("5.4", "5.4_satisfaction", "satisfaction", "ratio", target=0.9)

INDICATORS: tuple[Indicator, ...] = (
    ON_TIME,
    PROCESSING_TIME,
    ONLINE,
    ONLINE_PAYMENT,
    DIGITISED,
    VNEID,
    SATISFACTION,
)
WORKING_DAY_SECONDS = 8 * 3600


# ---------------------------------------------------------------------------------------------
# Periods
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """[start, end) in business time; both aware."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for bound in (self.start, self.end):
            if bound.tzinfo is None or bound.utcoffset() is None:
                raise ValueError(f"period bounds must be timezone-aware: {bound!r}")
        if self.end <= self.start:
            raise ValueError(f"empty period: {self.start.isoformat()} to {self.end.isoformat()}")

    def __contains__(self, moment: object) -> bool:
        return isinstance(moment, datetime) and self.start <= moment < self.end

    @classmethod
    def trailing(cls, until: datetime, days: int) -> Period:
        """`days` days up to and including the instant `until` (the engine clock)."""
        end = until + timedelta(microseconds=1)
        return cls(end - timedelta(days=days), end)


def parse_bound(text: str, *, end: bool) -> datetime:
    """A period bound from the command line.

    A date is a whole local day (Asia/Ho_Chi_Minh): as a start, its first instant; as an end,
    the first instant of the next day, so `--from 2025-03-01 --to 2025-03-31` is all of March.
    A datetime must carry its offset and is taken as it is.
    """
    text = text.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            raise ValueError(f"{text!r}: a time needs its UTC offset, e.g. +07:00") from None
        return moment
    if end:
        day += timedelta(days=1)
    return datetime.combine(day, time(0), tzinfo=VN_TZ)


# ---------------------------------------------------------------------------------------------
# Facts and figures
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DossierFacts:
    """What the indicators need to know of one dossier."""

    agency: str  # receiving agency code
    level: str  # the receiving agency's level
    channel: int
    digitised: bool
    vneid_authenticated: bool
    paid_online: bool | None  # None: no fee paid
    received_at: datetime | None
    due_at: datetime | None
    finished_at: datetime | None
    paused_seconds: int = 0


@dataclass(slots=True)
class Tally:
    """Counts of one agency (or of all of them) for one period: the figures' terms."""

    received: int = 0
    online: int = 0
    digitised: int = 0
    vneid: int = 0
    paid: int = 0
    paid_online: int = 0
    finished: int = 0
    on_time: int = 0
    processed: int = 0  # finished dossiers that had been received: 2.2's denominator
    processing_seconds: int = 0
    complaints: int = 0  # no source yet: always 0 (see the module doc)

    def add(self, facts: DossierFacts, period: Period, calendar: WorkingCalendar) -> None:
        if facts.received_at in period:
            self.received += 1
            self.online += facts.channel == ONLINE_CHANNEL
            self.digitised += facts.digitised
            self.vneid += facts.vneid_authenticated
            if facts.paid_online is not None:
                self.paid += 1
                self.paid_online += facts.paid_online
        finished = facts.finished_at
        if finished is not None and finished in period:
            self.finished += 1
            self.on_time += facts.due_at is None or finished <= facts.due_at
            if facts.received_at is not None:
                worked = calendar.working_seconds_between(facts.received_at, finished)
                self.processed += 1
                self.processing_seconds += max(0, worked - facts.paused_seconds)

    def merge(self, other: Tally) -> None:
        for term in fields(self):
            setattr(self, term.name, getattr(self, term.name) + getattr(other, term.name))


@dataclass(frozen=True, slots=True)
class Figure:
    indicator: Indicator
    numerator: int  # a count, or working seconds for 2.2
    denominator: int

    @property
    def value(self) -> float | None:
        """The figure (a ratio, or seconds for 2.2); None (N/A) when nothing to divide by."""
        if self.denominator == 0:
            return None
        return self.numerator / self.denominator


def figures(t: Tally) -> dict[str, Figure]:
    """The figures of one tally, by indicator code."""
    late = t.finished - t.on_time
    terms: dict[Indicator, tuple[int, int]] = {
        ON_TIME: (t.on_time, t.finished),
        PROCESSING_TIME: (t.processing_seconds, t.processed),
        ONLINE: (t.online, t.received),
        ONLINE_PAYMENT: (t.paid_online, t.paid),
        DIGITISED: (t.digitised, t.received),
        VNEID: (t.vneid, t.received),
        # 100% − overdue% − complaints%, over the same finished dossiers.
        SATISFACTION: (t.finished - late - t.complaints, t.finished),
    }
    return {i.code: Figure(i, *terms[i]) for i in INDICATORS}


@dataclass(frozen=True, slots=True)
class AgencyFigures:
    agency: str
    level: str
    tally: Tally = field(compare=False)
    figures: Mapping[str, Figure]


@dataclass(frozen=True, slots=True)
class Report:
    period: Period
    agencies: tuple[AgencyFigures, ...]  # sorted by level, agency
    total: AgencyFigures  # all agencies together (agency and level "*")


def tally(
    facts: Iterable[DossierFacts], period: Period, calendar: WorkingCalendar
) -> dict[tuple[str, str], Tally]:
    """Tallies by (agency, level)."""
    tallies: dict[tuple[str, str], Tally] = {}
    for f in facts:
        group = tallies.get((f.agency, f.level))
        if group is None:
            group = tallies[(f.agency, f.level)] = Tally()
        group.add(f, period, calendar)
    return tallies


def report(facts: Iterable[DossierFacts], period: Period, calendar: WorkingCalendar) -> Report:
    tallies = tally(facts, period, calendar)
    total = Tally()
    agencies: list[AgencyFigures] = []
    for (agency, level), t in sorted(tallies.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if t.received == 0 and t.finished == 0:
            continue  # nothing of this agency in the period: no row of N/As
        total.merge(t)
        agencies.append(AgencyFigures(agency, level, t, figures(t)))
    return Report(period, tuple(agencies), AgencyFigures("*", "*", total, figures(total)))


# ---------------------------------------------------------------------------------------------
# Receiving levels
# ---------------------------------------------------------------------------------------------

LevelOf = Callable[[str, int], str | None]  # (procedure, workflow version) -> receiving level


def receiving_levels(catalogue: Catalogue) -> LevelOf:
    levels = {(v.code, v.version): v.receiving_level for v in catalogue.all_versions()}

    def level_of(procedure: str, version: int) -> str | None:
        return levels.get((procedure, version))

    return level_of
