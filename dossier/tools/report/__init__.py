"""The summary and the HTML report of a run, read from the engine's database.

`load` reads the database once (`data`), `summary` turns it into the figures printed at the end
of `dossier demo` (and checks them against the simulator's manifest), `html` draws the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dossier.tools.report.data import RunData, load_run
from dossier.tools.report.summary import Summary, summarize
from engine import indicators as ind
from engine.calendar import WorkingCalendar
from engine.procedures import Catalogue


def load(
    database_url: str,
    consumer_group: str,
    catalogue: Catalogue,
    calendar: WorkingCalendar,
    period: ind.Period,
    *,
    province: str,
    agency_names: Mapping[str, str] | None = None,
    manifest: Mapping[str, Any] | None = None,
    seconds: float | None = None,
) -> tuple[Summary, RunData]:
    from engine.store.sql import create_db_engine

    db = create_db_engine(database_url)
    try:
        with db.connect() as connection:
            run = load_run(connection, catalogue, consumer_group, agency_names)
    finally:
        db.dispose()
    summary = summarize(
        run, calendar, period, province=province, manifest=manifest, seconds=seconds
    )
    return summary, run


__all__ = ["RunData", "Summary", "load"]
