"""The Decision 766 indicators on a hand-computed fixture, through the pure functions and
through the SQL query on a real (SQLite) database: both must give the same figures.

March 2025 has no public holiday in Vietnam; 2025-03-03 is a Monday. Working time is
07:00-11:30 and 13:30-17:00 local (8 hours a day). The expected figures below are worked out
by hand from those rules, not by the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine import indicators as ind
from engine.application.ports import ChangeSet, StoredDossier
from engine.calendar import VN_TZ, WorkingCalendar
from engine.procedures import load_catalogue
from engine.store.migrate import upgrade
from engine.store.queries import indicator_report
from engine.store.sql import SqlUnitOfWork, create_db_engine
from tests.store_contract import make_dossier

C1 = "000.00.19.H56"  # a commune
C2 = "000.00.20.H56"  # a commune with nothing in March
P = "000.00.00.H56"  # a province department
MARCH = ind.Period(datetime(2025, 3, 1, tzinfo=VN_TZ), datetime(2025, 4, 1, tzinfo=VN_TZ))


def local(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2025, month, day, hour, minute, tzinfo=VN_TZ)


@dataclass(frozen=True)
class Case:
    code: str
    agency: str
    channel: int
    digitised: bool
    vneid: bool
    paid_online: bool | None
    received_at: datetime | None
    due_at: datetime | None
    finished_at: datetime | None
    paused_seconds: int = 0
    procedure: str = "1.004222"
    current_level: str = "commune"


CASES = [
    # Late by two hours; worked Mon 08:00-17:00 (7 h) + Tue 07:00-10:00 (3 h) = 36,000 s.
    Case("c1-a", C1, 2, True, True, True, local(3, 8), local(4, 8), local(4, 10)),
    # On time; Mon 09:00 to Fri 16:00 = 6 + 3 x 8 + 7 = 37 h, less 2 h paused = 126,000 s.
    Case("c1-b", C1, 1, True, False, False, local(3, 9), local(12, 9), local(7, 16), 7200),
    # Still open.
    Case("c1-c", C1, 2, False, True, None, local(28, 10), local(4, 10, month=4), None),
    # Refused at reception: finished, never received, no appointment to miss.
    Case("c1-d", C1, 2, True, True, None, None, None, local(5, 8)),
    # Received in February, finished in March: Tue 25 Feb 14:00 to Mon 3 Mar 15:00
    # = 3 + 3 x 8 + 6 = 33 h = 118,800 s.
    Case("c1-e", C1, 1, True, False, None, local(25, 14, month=2), local(4, 14), local(3, 15)),
    # Received at the very end of March: excluded (the period's end is excluded).
    Case("c1-f", C1, 2, True, True, None, local(1, 0, month=4), None, None),
    # Received at the very start of March (a Saturday): included.
    Case("c1-g", C1, 1, True, False, None, local(1, 0), None, None),
    # Nothing in March.
    Case("c2-a", C2, 2, True, True, None, local(20, 9, month=2), local(21, 9, month=2), None),
    # A province dossier, in and out within the morning: 1.5 h = 5,400 s.
    Case(
        "p-a", P, 2, True, True, None, local(10, 8), local(20, 8), local(10, 9, 30),
        procedure="P.1", current_level="province",
    ),
    # An inter-level dossier now at the province, received by commune C1: counted there
    # (receiving agency at its receiving level), whatever level handles it now.
    Case(
        "c1-h", C1, 1, False, False, None, local(17, 9), local(28, 9), None,
        procedure="DD.GCN.LD", current_level="province",
    ),
]  # fmt: skip
LEVELS = {("1.004222", 1): "commune", ("P.1", 1): "province", ("DD.GCN.LD", 1): "commune"}


def stored_dossiers(cases: list[Case]) -> list[StoredDossier]:
    """The cases as the engine would have stored them, ready to be written."""
    stored: list[StoredDossier] = []
    for n, case in enumerate(cases, start=1):
        finished = case.finished_at is not None
        dossier = make_dossier(
            f"{case.agency}-250301-{n:04d}",
            procedure=case.procedure,
            workflow_version=1,
            receiving_agency=case.agency,
            agency=case.agency,
            level=case.current_level,
            channel=case.channel,
            digitised=case.digitised,
            vneid_authenticated=case.vneid,
            paid_online=case.paid_online,
            received_at=case.received_at,
            due_at=case.due_at,
            finished_at=case.finished_at,
            paused_seconds=case.paused_seconds,
            status_code=10 if finished else 4,
            final=finished,
        )
        stored.append(StoredDossier(dossier, 0, None))
    return stored


def level_of(procedure: str, version: int) -> str | None:
    return LEVELS.get((procedure, version))


def facts(case: Case) -> ind.DossierFacts:
    return ind.DossierFacts(
        agency=case.agency,
        level=level_of(case.procedure, 1) or case.current_level,
        channel=case.channel,
        digitised=case.digitised,
        vneid_authenticated=case.vneid,
        paid_online=case.paid_online,
        received_at=case.received_at,
        due_at=case.due_at,
        finished_at=case.finished_at,
        paused_seconds=case.paused_seconds,
    )


@pytest.fixture(scope="module")
def calendar() -> WorkingCalendar:
    return WorkingCalendar.load()


def terms(figure: ind.Figure) -> tuple[int, int]:
    return figure.numerator, figure.denominator


def by_agency(report: ind.Report) -> dict[tuple[str, str], dict[str, ind.Figure]]:
    return {(g.agency, g.level): dict(g.figures) for g in report.agencies}


def test_hand_computed_figures(calendar: WorkingCalendar) -> None:
    report = ind.report((facts(c) for c in CASES), MARCH, calendar)
    groups = by_agency(report)
    assert list(groups) == [(C1, "commune"), (P, "province")]  # C2: nothing in March

    c1 = groups[(C1, "commune")]
    # Received in March: a, b, c, g, h.
    assert terms(c1["3.3"]) == (2, 5)  # online: a, c
    assert terms(c1["4.2"]) == (3, 5)  # digitised: a, b, g
    assert terms(c1["4.5"]) == (2, 5)  # VNeID: a, c
    assert terms(c1["3.6"]) == (1, 2)  # paid: a online, b at the counter
    # Finished in March: a (late), b, d (refused), e.
    assert terms(c1["2.1"]) == (3, 4)
    assert terms(c1["2.2"]) == (36_000 + 126_000 + 118_800, 3)  # d was never received
    assert c1["2.2"].value == 93_600  # 3.25 working days
    assert terms(c1["5.4"]) == (3, 4)  # no complaints source: 100% - 25% overdue
    assert c1["2.1"].value == 0.75

    p = groups[(P, "province")]
    assert [p[code].value for code in ("2.1", "2.2", "3.3", "4.2", "4.5", "5.4")] == [
        1.0, 5400.0, 1.0, 1.0, 1.0, 1.0,
    ]  # fmt: skip
    assert p["3.6"].value is None  # nothing paid: N/A, not 0

    total = report.total.figures
    assert terms(total["2.1"]) == (4, 5)
    assert terms(total["2.2"]) == (286_200, 4)
    assert terms(total["3.3"]) == (3, 6)
    assert terms(total["3.6"]) == (1, 2)


def test_na_is_none_not_zero(calendar: WorkingCalendar) -> None:
    only_open = [facts(c) for c in CASES if c.code == "c1-c"]
    figures = by_agency(ind.report(only_open, MARCH, calendar))[(C1, "commune")]
    for code in ("2.1", "2.2", "3.6", "5.4"):
        assert figures[code].denominator == 0
        assert figures[code].value is None
    assert figures["3.3"].value == 1.0


def test_complaints_lower_satisfaction_below_on_time() -> None:
    tally = ind.Tally(finished=10, on_time=9, complaints=1)
    figures = ind.figures(tally)
    assert figures["2.1"].value == 0.9
    assert figures["5.4"].value == 0.8


def test_processing_time_never_negative(calendar: WorkingCalendar) -> None:
    # A pause longer than the elapsed working time (data from an older system) counts as 0.
    odd = ind.DossierFacts(
        C1, "commune", 1, False, False, None, local(3, 8), None, local(3, 9), 99_999
    )
    tally = ind.tally([odd], MARCH, calendar)[(C1, "commune")]
    assert (tally.processing_seconds, tally.processed) == (0, 1)


def test_sql_gives_the_same_figures(tmp_path: Path, calendar: WorkingCalendar) -> None:
    db = create_db_engine(f"sqlite:///{tmp_path / 'kpi.db'}")
    upgrade(db)
    stored = stored_dossiers(CASES)
    with SqlUnitOfWork(db) as uow:
        uow.repo.write(ChangeSet(dossiers=stored))
        uow.commit()
    expected = ind.report((facts(c) for c in CASES), MARCH, calendar)
    with db.connect() as connection:
        from_sql = indicator_report(connection, MARCH, calendar, level_of)
        only_p = indicator_report(connection, MARCH, calendar, level_of, agency=P)
    db.dispose()
    assert by_agency(from_sql) == by_agency(expected)
    assert from_sql.total.figures == expected.total.figures
    assert list(by_agency(only_p)) == [(P, "province")]


def test_receiving_levels_come_from_the_catalogue() -> None:
    level_of = ind.receiving_levels(load_catalogue())
    assert level_of("DD.GCN.LD", 2) == "commune"  # received at the commune, decided above
    assert level_of("1.001193", 1) == "commune"
    assert level_of("no.such.procedure", 1) is None


def test_period_bounds() -> None:
    assert ind.parse_bound("2025-03-01", end=False) == datetime(2025, 3, 1, tzinfo=VN_TZ)
    assert ind.parse_bound("2025-03-31", end=True) == datetime(2025, 4, 1, tzinfo=VN_TZ)
    assert ind.parse_bound("2025-03-31T10:00:00+00:00", end=True) == datetime(
        2025, 3, 31, 10, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="offset"):
        ind.parse_bound("2025-03-31T10:00:00", end=False)
    with pytest.raises(ValueError, match="empty period"):
        ind.Period(MARCH.end, MARCH.start)
    clock = datetime(2025, 3, 31, 17, tzinfo=UTC)
    window = ind.Period.trailing(clock, 30)
    assert clock in window  # the engine clock itself is inside
    assert window.start == clock - timedelta(days=30) + timedelta(microseconds=1)
