"""The storage contract (`engine.application.ports`), written once and run against every adapter.

A test module subclasses `StoreContract` and provides a `uow_factory` fixture: a callable that
returns a new unit of work over one shared, initially empty store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from engine.application.ports import (
    ChangeSet,
    ConcurrencyError,
    HandoverScan,
    HistoryRow,
    LedgerEntry,
    MigrationScan,
    NoticeScan,
    OutboxMessage,
    ParkedInput,
    Position,
    StoredDossier,
    UnitOfWork,
)
from engine.dossier import Dossier

# The stores' units of work: their repository is the batch's port (reads and `write`), the
# relay's outbox port, and the read models the stores share (`history`, `parked_count`,
# `outcome_counts`).
UowFactory = Callable[[], UnitOfWork[Any]]

ICT = timezone(timedelta(hours=7))  # Asia/Ho_Chi_Minh has no DST: a fixed offset is exact
T0 = datetime(2025, 3, 3, 8, 15, 30, 123456, tzinfo=ICT)


def make_dossier(code: str = "000.00.19.H56-250303-0001", **changes: Any) -> Dossier:
    dossier = Dossier(
        code=code,
        procedure="1.004222",
        workflow_version=3,
        group="single-level",
        state="processing",
        status_code=4,
        level="commune",
        agency="000.00.19.H56",
        receiving_agency="000.00.19.H56",
        channel=2,
        full_online=True,
        vneid_authenticated=True,
        digitised=True,
        applicant_kind="citizen",
        submitted_at=T0,
        last_event_at=T0 + timedelta(hours=1),
        received_at=T0 + timedelta(minutes=30),
        due_at=datetime(2025, 3, 12, 10, 0, tzinfo=UTC),
        fees={"LP-CT": 20000},
        discounts={"LP-CT": 10000},
        sequence=2,
        inputs_applied=2,
    )
    return replace(dossier, **changes)


def make_history(code: str, seq: int, **changes: Any) -> HistoryRow:
    row = HistoryRow(
        dossier_code=code,
        seq=seq,
        source="urn:vn:agency:000.00.19.H56",
        event_id=f"{code}-e{seq}",
        type="vn.gov.dossier.received",
        event_time=T0 + timedelta(minutes=seq),
        schema_version=1,
        envelope={
            "specversion": "1.0",
            "id": f"{code}-e{seq}",
            "subject": code,
            "data": {"agency": "000.00.19.H56", "officer": "Nguyễn Văn A", "n": [1, 2.5]},
        },
        position=Position("dossier.commune", 2, 1000 + seq),
        state_before=None if seq == 1 else "received",
        state_after="received",
        status_code=2,
        workflow_version=3,
    )
    return replace(row, **changes)


def make_parked(code: str, n: int, **changes: Any) -> ParkedInput:
    parked = ParkedInput(
        source="urn:vn:agency:000.00.19.H56",
        event_id=f"{code}-p{n}",
        dossier_code=code,
        position=Position("dossier.district", 0, 50 + n),
        key=code.encode(),
        value=b'{"specversion":"1.0"}\x00\xff',
        headers=[("traceparent", b"00-abc-01"), ("bin", b"\x00\x01\xfe")],
        parked_at=T0 + timedelta(minutes=n),
        expires_at=T0 + timedelta(days=7, minutes=n),
        detail="resolved before transferred",
    )
    return replace(parked, **changes)


def make_message(message_id: str, **changes: Any) -> OutboxMessage:
    message = OutboxMessage(
        topic="dossier.status",
        key=b"000.00.19.H56-250303-0001",
        value=f'{{"id":"{message_id}"}}'.encode(),
        message_id=message_id,
        created_at=T0,
    )
    return replace(message, **changes)


def save_new(factory: UowFactory, *dossiers: Dossier, notice: datetime | None = None) -> None:
    with factory() as uow:
        uow.repo.write(ChangeSet(dossiers=[StoredDossier(d, 0, notice) for d in dossiers]))
        uow.commit()


class StoreContract:
    """Every adapter of `engine.application.ports.UnitOfWork` passes these."""

    # --- dossiers ----------------------------------------------------------------------------
    def test_save_load_round_trip(self, uow_factory: UowFactory) -> None:
        dossier = make_dossier(paid_online=None, paused_at=T0 + timedelta(hours=2))
        notice = datetime(2025, 3, 11, 10, 0, tzinfo=ICT)
        save_new(uow_factory, dossier, notice=notice)
        with uow_factory() as uow:
            loaded = uow.repo.load_dossiers([dossier.code, "missing"])
        assert loaded == {dossier.code: StoredDossier(dossier, 1, notice)}
        got = loaded[dossier.code]
        assert got.dossier.submitted_at.utcoffset() == timedelta(hours=7)
        assert got.next_notice_at is not None and got.next_notice_at.tzinfo is not None

    def test_update_bumps_revision(self, uow_factory: UowFactory) -> None:
        dossier = make_dossier()
        save_new(uow_factory, dossier)
        changed = replace(dossier, state="resolved", status_code=9, final=False, outcome="ok")
        with uow_factory() as uow:
            stored = uow.repo.load_dossiers([dossier.code])[dossier.code]
            uow.repo.write(ChangeSet(dossiers=[StoredDossier(changed, stored.revision, None)]))
            uow.commit()
        with uow_factory() as uow:
            assert uow.repo.load_dossiers([dossier.code]) == {
                dossier.code: StoredDossier(changed, 2, None)
            }

    def test_stale_revision_is_a_conflict(self, uow_factory: UowFactory) -> None:
        dossier = make_dossier()
        save_new(uow_factory, dossier)
        with uow_factory() as uow:
            uow.repo.write(
                ChangeSet(dossiers=[StoredDossier(replace(dossier, state="a"), 1, None)])
            )
            uow.commit()
        with uow_factory() as uow:
            other = make_dossier("000.00.19.H56-250303-0002")
            with pytest.raises(ConcurrencyError):
                uow.repo.write(
                    ChangeSet(
                        dossiers=[
                            StoredDossier(other, 0, None),
                            StoredDossier(replace(dossier, state="b"), 1, None),
                        ]
                    )
                )
            with pytest.raises(ConcurrencyError):
                uow.commit()  # a unit of work that conflicted must be rolled back
        with uow_factory() as uow:
            loaded = uow.repo.load_dossiers([dossier.code, other.code])
            assert {code: s.dossier.state for code, s in loaded.items()} == {dossier.code: "a"}
            assert loaded[dossier.code].revision == 2

    def test_new_dossier_that_exists_is_a_conflict(self, uow_factory: UowFactory) -> None:
        dossier = make_dossier()
        save_new(uow_factory, dossier)
        with uow_factory() as uow, pytest.raises(ConcurrencyError):
            uow.repo.write(ChangeSet(dossiers=[StoredDossier(dossier, 0, None)]))

    def test_rollback_after_conflict_allows_new_work(self, uow_factory: UowFactory) -> None:
        dossier = make_dossier()
        save_new(uow_factory, dossier)
        with uow_factory() as uow:
            with pytest.raises(ConcurrencyError):
                uow.repo.write(ChangeSet(dossiers=[StoredDossier(dossier, 0, None)]))
            uow.rollback()
            uow.repo.write(ChangeSet(clock=T0))
            uow.commit()
        with uow_factory() as uow:
            assert uow.repo.get_clock() == T0

    def test_many_dossiers_across_chunks(self, uow_factory: UowFactory) -> None:
        dossiers = [make_dossier(f"000.00.19.H56-250303-{i:04d}") for i in range(2345)]
        save_new(uow_factory, *dossiers)
        with uow_factory() as uow:
            loaded = uow.repo.load_dossiers(d.code for d in dossiers)
            assert len(loaded) == len(dossiers)
            assert loaded[dossiers[-1].code].dossier == dossiers[-1]
            uow.repo.write(ChangeSet(dossiers=[StoredDossier(d, 1, None) for d in dossiers]))
            uow.commit()
        with uow_factory() as uow:
            revisions = {
                s.revision for s in uow.repo.load_dossiers(d.code for d in dossiers).values()
            }
            assert revisions == {2}

    def test_naive_datetimes_are_refused(self, uow_factory: UowFactory) -> None:
        with uow_factory() as uow, pytest.raises(ValueError, match="naive"):
            uow.repo.write(ChangeSet(clock=datetime(2025, 1, 1, 8, 0)))

    # --- notices -----------------------------------------------------------------------------
    def test_notices_due(self, uow_factory: UowFactory) -> None:
        a, b, c, d = (make_dossier(f"000.00.19.H56-250303-000{i}") for i in range(1, 5))
        with uow_factory() as uow:
            uow.repo.write(
                ChangeSet(
                    dossiers=[
                        StoredDossier(a, 0, T0 + timedelta(hours=3)),
                        StoredDossier(b, 0, T0 + timedelta(hours=1)),
                        StoredDossier(c, 0, None),
                        StoredDossier(d, 0, T0 + timedelta(days=1)),
                    ]
                )
            )
            uow.commit()
        with uow_factory() as uow:
            now = (T0 + timedelta(hours=3)).astimezone(UTC)  # the same instant, spelt in UTC
            due = uow.repo.notices_due(now, NoticeScan(10))
            assert [s.dossier.code for s in due] == [b.code, a.code]
            assert due[1] == StoredDossier(a, 1, T0 + timedelta(hours=3))
            assert [s.dossier.code for s in uow.repo.notices_due(now, NoticeScan(1))] == [b.code]
            assert uow.repo.notices_due(T0, NoticeScan(10)) == []

    def test_notices_due_among_the_partitions_asked_for(self, uow_factory: UowFactory) -> None:
        on_0, on_1, unknown = (make_dossier(f"000.00.19.H56-250303-000{i}") for i in (1, 2, 3))
        with uow_factory() as uow:
            uow.repo.write(
                ChangeSet(
                    dossiers=[
                        StoredDossier(on_0, 0, T0, partition=0),
                        StoredDossier(on_1, 0, T0, partition=1),
                        StoredDossier(unknown, 0, T0),
                    ]
                )
            )
            uow.commit()
        now = T0 + timedelta(hours=1)

        def due(partitions: set[int] | None) -> set[str]:
            with uow_factory() as uow:
                found = uow.repo.notices_due(now, NoticeScan(10, partitions=partitions))
                return {s.dossier.code for s in found}

        assert due(None) == {on_0.code, on_1.code, unknown.code}
        assert due({0}) == {on_0.code, unknown.code}  # a dossier of no known partition: anyone's
        assert due({1, 7}) == {on_1.code, unknown.code}
        assert due(set()) == {unknown.code}
        with uow_factory() as uow:
            loaded = uow.repo.load_dossiers([on_0.code, unknown.code])
        assert (loaded[on_0.code].partition, loaded[unknown.code].partition) == (0, None)

    # --- handovers (contract 1.1) ------------------------------------------------------------
    def test_handovers_due(self, uow_factory: UowFactory) -> None:
        ended, other = "000.00.12.H56", "000.00.13.H56"
        cutover = datetime(2025, 7, 1, tzinfo=ICT)
        opened_before = cutover.astimezone(UTC) - timedelta(microseconds=1)
        held = [
            make_dossier(f"000.00.19.H56-250630-000{i}", agency=ended, opened_clock=opened)
            for i, opened in ((3, None), (1, opened_before), (2, None))
        ]
        backfill = make_dossier(
            "000.00.19.H56-250630-0004", agency=ended, opened_clock=cutover.astimezone(UTC)
        )
        final = make_dossier("000.00.19.H56-250630-0005", agency=ended, final=True)
        elsewhere = make_dossier("000.00.19.H56-250630-0006", agency=other)
        on_1 = make_dossier("000.00.19.H56-250630-0007", agency=ended)
        with uow_factory() as uow:
            uow.repo.write(
                ChangeSet(
                    dossiers=[
                        *(StoredDossier(d, 0, None, partition=0) for d in held),
                        StoredDossier(backfill, 0, None, partition=0),
                        StoredDossier(final, 0, None, partition=0),
                        StoredDossier(elsewhere, 0, None, partition=0),
                        StoredDossier(on_1, 0, None, partition=1),
                    ]
                )
            )
            uow.commit()

        def due(limit: int = 10, partitions: set[int] | None = None) -> list[str]:
            scan = HandoverScan({ended: cutover}, limit, partitions=partitions)
            with uow_factory() as uow:
                return [s.dossier.code for s in uow.repo.handovers_due(scan)]

        in_order = sorted(d.code for d in held)
        assert due() == [*in_order, on_1.code]
        assert due(limit=2) == in_order[:2]
        assert due(partitions={0}) == in_order
        assert due(partitions={1}) == [on_1.code]
        with uow_factory() as uow:
            assert uow.repo.handovers_due(HandoverScan({}, 10)) == []
            loaded = uow.repo.load_dossiers([held[1].code])[held[1].code].dossier
        assert loaded.opened_clock == opened_before

    # --- workflow migrations -----------------------------------------------------------------
    def test_migrations_due(self, uow_factory: UowFactory) -> None:
        cutover = datetime(2025, 7, 1, tzinfo=ICT)
        other_cutover = datetime(2025, 8, 1, tzinfo=ICT)

        def pinned(i: int, **changes: Any) -> Dossier:
            values: dict[str, Any] = {"procedure": "DD.GCN.LD", "workflow_version": 1}
            values.update(state="verifying", opened_clock=None)
            return make_dossier(f"000.00.19.H56-250630-{i:04d}", **(values | changes))

        due_ones = [
            pinned(3),
            # The engine keeps opened_clock in UTC (the SQL store compares it as text).
            pinned(
                1,
                state="upper_processing",
                opened_clock=cutover.astimezone(UTC) - timedelta(seconds=1),
            ),
            pinned(2),
        ]
        staying = [
            pinned(4, opened_clock=cutover.astimezone(UTC)),  # a backfill
            pinned(5, final=True),
            pinned(6, state="registered"),  # a state the plan leaves out: refused, not scanned
            pinned(7, workflow_version=2),  # moved already
            pinned(8, procedure="1.004222"),  # another procedure
        ]
        other_plan = pinned(9, procedure="1.001184", workflow_version=1, state="processing")
        on_1 = pinned(10)
        with uow_factory() as uow:
            uow.repo.write(
                ChangeSet(
                    dossiers=[
                        *(StoredDossier(d, 0, None, partition=0) for d in due_ones),
                        *(StoredDossier(d, 0, None, partition=0) for d in staying),
                        StoredDossier(other_plan, 0, None, partition=0),
                        StoredDossier(on_1, 0, None, partition=1),
                    ]
                )
            )
            uow.commit()
        plans = {
            ("DD.GCN.LD", 1): (cutover, frozenset({"verifying", "upper_processing"})),
            ("1.001184", 1): (other_cutover, frozenset({"processing"})),
        }

        def due(limit: int = 20, partitions: set[int] | None = None) -> list[str]:
            scan = MigrationScan(plans, limit, partitions=partitions)
            with uow_factory() as uow:
                found = [s.dossier.code for s in uow.repo.migrations_due(scan)]
            assert all(scan.covers(make) for make in [*due_ones, other_plan, on_1])
            assert not any(scan.covers(make) for make in staying)
            return found

        in_order = sorted(d.code for d in due_ones)
        assert due() == [*in_order, other_plan.code, on_1.code]
        assert due(limit=2) == in_order[:2]
        assert due(partitions={0}) == [*in_order, other_plan.code]
        assert due(partitions={1}) == [on_1.code]
        with uow_factory() as uow:
            assert uow.repo.migrations_due(MigrationScan({}, 10)) == []

    def test_partition_clocks(self, uow_factory: UowFactory) -> None:
        later = T0 + timedelta(days=2)
        with uow_factory() as uow:
            uow.repo.write(
                ChangeSet(
                    dossiers=[
                        StoredDossier(make_dossier("000.00.19.H56-250303-0001"), 0, None, 0),
                        StoredDossier(
                            make_dossier("000.00.19.H56-250303-0002", last_event_at=later),
                            0,
                            None,
                            0,
                        ),
                        StoredDossier(make_dossier("000.00.19.H56-250303-0003"), 0, None, 2),
                        StoredDossier(make_dossier("000.00.19.H56-250303-0004"), 0, None),
                    ]
                )
            )
            uow.commit()
        base = make_dossier().last_event_at
        with uow_factory() as uow:
            assert uow.repo.partition_clocks(None) == {0: later, 2: base}
            assert uow.repo.partition_clocks([0, 1]) == {0: later}
            assert uow.repo.partition_clocks([2]) == {2: base}
            assert uow.repo.partition_clocks([]) == {}

    # --- rollback ----------------------------------------------------------------------------
    def _write_everything(self, uow: UnitOfWork[Any]) -> None:
        code = "000.00.19.H56-250303-0001"
        uow.repo.write(
            ChangeSet(
                dossiers=[StoredDossier(make_dossier(code), 0, T0)],
                history=[make_history(code, 1)],
                ledger=[LedgerEntry("s", "e1", "h1", code)],
                parked=[make_parked(code, 1)],
                outbox=[make_message("m1")],
                group="g",
                positions={("dossier.commune", 0): 10},
                outcomes={("dossier.commune", "applied"): 1},
                clock=T0,
            )
        )

    def _assert_empty(self, uow: UnitOfWork[Any]) -> None:
        code = "000.00.19.H56-250303-0001"
        repo = uow.repo
        assert repo.load_dossiers([code]) == {}
        assert repo.applied_hashes([("s", "e1")]) == {}
        assert repo.history(code) == []
        assert repo.parked_for([code]) == []
        assert repo.parked_count() == 0
        assert repo.unsent_outbox(10) == []
        assert repo.outbox_backlog() == 0
        assert repo.load_positions("g") == {}
        assert repo.outcome_counts("g") == {}
        assert repo.get_clock() is None
        assert repo.notices_due(T0 + timedelta(days=1), NoticeScan(10)) == []

    def test_leaving_without_commit_rolls_back(self, uow_factory: UowFactory) -> None:
        with uow_factory() as uow:
            self._write_everything(uow)
            assert uow.repo.load_dossiers(["000.00.19.H56-250303-0001"])  # visible inside
        with uow_factory() as uow:
            self._assert_empty(uow)

    def test_exception_rolls_back_and_propagates(self, uow_factory: UowFactory) -> None:
        with pytest.raises(KeyError), uow_factory() as uow:
            self._write_everything(uow)
            raise KeyError("boom")
        with uow_factory() as uow:
            self._assert_empty(uow)

    def test_explicit_rollback(self, uow_factory: UowFactory) -> None:
        with uow_factory() as uow:
            self._write_everything(uow)
            uow.rollback()
            self._assert_empty(uow)
            uow.repo.write(ChangeSet(clock=T0))
            uow.commit()
        with uow_factory() as uow:
            assert uow.repo.get_clock() == T0
            assert uow.repo.load_dossiers(["000.00.19.H56-250303-0001"]) == {}

    def test_work_continues_after_commit(self, uow_factory: UowFactory) -> None:
        uow = uow_factory()
        with uow:
            uow.repo.write(ChangeSet(clock=T0))
            uow.commit()
            uow.repo.write(ChangeSet(group="g", positions={("t", 0): 1}))
            uow.commit()
            uow.repo.write(ChangeSet(clock=T0 + timedelta(days=1)))  # not committed
        with uow:  # a unit of work is reusable
            assert uow.repo.get_clock() == T0
            assert uow.repo.load_positions("g") == {("t", 0): 1}

    # --- input ledger ------------------------------------------------------------------------
    def test_ledger(self, uow_factory: UowFactory) -> None:
        entries = [LedgerEntry(f"urn:s{i % 3}", f"id-{i}", f"hash-{i}", "D1") for i in range(2100)]
        with uow_factory() as uow:
            uow.repo.write(ChangeSet(ledger=entries))
            uow.commit()
        with uow_factory() as uow:
            keys = [(e.source, e.event_id) for e in entries] + [("urn:s0", "nope"), ("x", "id-0")]
            hashes = uow.repo.applied_hashes(keys)
            assert hashes == {(e.source, e.event_id): e.content_hash for e in entries}
            assert uow.repo.applied_hashes([]) == {}

    def test_ledger_entry_recorded_twice_is_a_conflict(self, uow_factory: UowFactory) -> None:
        with uow_factory() as uow:
            uow.repo.write(ChangeSet(ledger=[LedgerEntry("s", "e", "h", "D1")]))
            uow.commit()
        with uow_factory() as uow, pytest.raises(ConcurrencyError):
            uow.repo.write(ChangeSet(ledger=[LedgerEntry("s", "e", "h2", "D1")]))

    # --- history -----------------------------------------------------------------------------
    def test_history_append_and_ordered_read(self, uow_factory: UowFactory) -> None:
        code, other = "D-1", "D-2"
        rows = [make_history(code, seq) for seq in (1, 2, 3)]
        unkeyed = replace(
            make_history(code, 4), position=Position("dossier.submission", None, None)
        )
        with uow_factory() as uow:
            uow.repo.write(ChangeSet(history=[rows[1], make_history(other, 1), rows[0]]))
            uow.commit()
        with uow_factory() as uow:
            uow.repo.write(ChangeSet(history=[unkeyed, rows[2]]))
            uow.commit()
        with uow_factory() as uow:
            assert uow.repo.history(code) == [*rows, unkeyed]
            assert uow.repo.history(other) == [make_history(other, 1)]
            assert uow.repo.history("nobody") == []

    def test_history_seq_taken_is_a_conflict(self, uow_factory: UowFactory) -> None:
        with uow_factory() as uow:
            uow.repo.write(ChangeSet(history=[make_history("D-1", 1)]))
            uow.commit()
        with uow_factory() as uow, pytest.raises(ConcurrencyError):
            uow.repo.write(ChangeSet(history=[make_history("D-1", 1, event_id="other")]))

    # --- parked inputs -----------------------------------------------------------------------
    def test_park_and_unpark(self, uow_factory: UowFactory) -> None:
        a, b = "D-A", "D-B"
        first = make_parked(a, 1, expires_at=T0 + timedelta(days=3))
        second = make_parked(b, 2, key=None, headers=[])
        third = make_parked(a, 3, expires_at=T0 + timedelta(days=1))
        with uow_factory() as uow:
            uow.repo.write(ChangeSet(parked=[first, second]))
            uow.repo.write(ChangeSet(parked=[third]))
            uow.commit()
        with uow_factory() as uow:
            repo = uow.repo
            assert repo.parked_count() == 3
            found = repo.parked_for([a, b, "D-none"])
            ids = [p.id for p in found]
            assert ids == sorted(i or 0 for i in ids) and None not in ids
            assert [replace(p, id=None) for p in found] == [
                _normalised(first),
                _normalised(second),
                _normalised(third),
            ]
            assert [p.event_id for p in repo.parked_for([a])] == [first.event_id, third.event_id]

            assert repo.parked_expired(T0 + timedelta(hours=23), 10) == []
            expired = repo.parked_expired(T0 + timedelta(days=5), 10)
            assert [p.event_id for p in expired] == [third.event_id, first.event_id]
            assert [p.event_id for p in repo.parked_expired(T0 + timedelta(days=5), 1)] == [
                third.event_id
            ]
            repo.write(ChangeSet(unparked=[p.id for p in expired if p.id is not None] + [999_999]))
            uow.commit()
        with uow_factory() as uow:
            assert uow.repo.parked_count() == 1
            assert [p.event_id for p in uow.repo.parked_for([a, b])] == [second.event_id]

    # --- outbox ------------------------------------------------------------------------------
    def test_outbox_dedup_order_and_mark_sent(self, uow_factory: UowFactory) -> None:
        with uow_factory() as uow:
            uow.repo.write(ChangeSet(outbox=[make_message("m1"), make_message("m2", key=None)]))
            uow.commit()
        with uow_factory() as uow:
            # m2 again (a re-emitted output), and m3 twice within one batch
            uow.repo.write(
                ChangeSet(
                    outbox=[
                        make_message("m3"),
                        make_message("m2", value=b"changed"),
                        make_message("m3"),
                        make_message("m4", topic="dossier.dlq"),
                    ]
                )
            )
            uow.commit()
        with uow_factory() as uow:
            repo = uow.repo
            assert repo.outbox_backlog() == 4
            unsent = repo.unsent_outbox(10)
            assert [m.message_id for m in unsent] == ["m1", "m2", "m3", "m4"]
            ids = [m.id for m in unsent]
            assert ids == sorted(i or 0 for i in ids) and None not in ids
            assert replace(unsent[1], id=None) == make_message("m2", key=None)
            assert unsent[3].topic == "dossier.dlq"
            assert [m.message_id for m in repo.unsent_outbox(2)] == ["m1", "m2"]
            repo.mark_sent([m.id for m in unsent[:3] if m.id is not None], T0)
            uow.commit()
        with uow_factory() as uow:
            assert uow.repo.outbox_backlog() == 1
            assert [m.message_id for m in uow.repo.unsent_outbox(10)] == ["m4"]
            # m1 was sent long ago: still a duplicate
            uow.repo.write(ChangeSet(outbox=[make_message("m1")]))
            assert uow.repo.outbox_backlog() == 1

    # --- positions ---------------------------------------------------------------------------
    def test_positions_upsert(self, uow_factory: UowFactory) -> None:
        with uow_factory() as uow:
            uow.repo.write(
                ChangeSet(
                    group="g1", positions={("dossier.commune", 0): 10, ("dossier.commune", 1): 5}
                )
            )
            uow.repo.write(ChangeSet(group="g2", positions={("dossier.commune", 0): 99}))
            uow.commit()
        with uow_factory() as uow:
            uow.repo.write(
                ChangeSet(
                    group="g1", positions={("dossier.commune", 1): 7, ("dossier.province", 0): 1}
                )
            )
            uow.repo.write(ChangeSet(group="g1", positions={}))
            uow.commit()
        with uow_factory() as uow:
            assert uow.repo.load_positions("g1") == {
                ("dossier.commune", 0): 10,
                ("dossier.commune", 1): 7,
                ("dossier.province", 0): 1,
            }
            assert uow.repo.load_positions("g2") == {("dossier.commune", 0): 99}
            assert uow.repo.load_positions("g3") == {}

    # --- outcome counts ----------------------------------------------------------------------
    def test_outcome_counts_add_up_per_group(self, uow_factory: UowFactory) -> None:
        applied, parked = ("dossier.commune", "applied"), ("dossier.commune", "parked")
        with uow_factory() as uow:
            uow.repo.write(ChangeSet(group="g1", outcomes={applied: 3, parked: 1}))
            uow.repo.write(ChangeSet(group="g2", outcomes={applied: 100}))
            uow.commit()
        with uow_factory() as uow:
            # A parked input applied later moves from one outcome to the other.
            uow.repo.write(ChangeSet(group="g1", outcomes={applied: 1, parked: -1}))
            uow.commit()
        with uow_factory() as uow:
            assert uow.repo.outcome_counts("g1") == {applied: 4, parked: 0}
            assert uow.repo.outcome_counts("g2") == {applied: 100}
            assert uow.repo.outcome_counts("g3") == {}

    # --- a batch's whole change set ----------------------------------------------------------
    def test_one_write_of_everything_a_batch_changed(self, uow_factory: UowFactory) -> None:
        code = "000.00.19.H56-250303-0001"
        with uow_factory() as uow:
            self._write_everything(uow)
            uow.commit()
        with uow_factory() as uow:
            repo = uow.repo
            [waiting] = repo.parked_for([code])
            assert waiting.id is not None
            stored = repo.load_dossiers([code])[code]
            # The next batch: the parked input applies (unparked), another one parks.
            repo.write(
                ChangeSet(
                    dossiers=[replace(stored, dossier=replace(stored.dossier, state="x"))],
                    history=[make_history(code, 2)],
                    ledger=[LedgerEntry("s", "e2", "h2", code)],
                    unparked=[waiting.id],
                    parked=[make_parked(code, 2)],
                    outbox=[make_message("m1"), make_message("m2")],
                    group="g",
                    positions={("dossier.commune", 0): 12},
                    outcomes={("dossier.commune", "applied"): 2},
                    clock=T0 + timedelta(hours=1),
                )
            )
            uow.commit()
        with uow_factory() as uow:
            repo = uow.repo
            assert repo.load_dossiers([code])[code].revision == 2
            assert repo.load_dossiers([code])[code].dossier.state == "x"
            assert [r.seq for r in repo.history(code)] == [1, 2]
            assert repo.applied_hashes([("s", "e1"), ("s", "e2")]) == {
                ("s", "e1"): "h1",
                ("s", "e2"): "h2",
            }
            assert [p.event_id for p in repo.parked_for([code])] == [f"{code}-p2"]
            assert [m.message_id for m in repo.unsent_outbox(10)] == ["m1", "m2"]
            assert repo.load_positions("g") == {("dossier.commune", 0): 12}
            assert repo.outcome_counts("g") == {("dossier.commune", "applied"): 3}
            assert repo.get_clock() == T0 + timedelta(hours=1)

    def test_an_empty_change_set_writes_nothing(self, uow_factory: UowFactory) -> None:
        with uow_factory() as uow:
            uow.repo.write(ChangeSet())
            uow.repo.write(ChangeSet(group="g", positions={}, outcomes={}))
            uow.commit()
        with uow_factory() as uow:
            self._assert_empty(uow)

    # --- clock -------------------------------------------------------------------------------
    def test_clock(self, uow_factory: UowFactory) -> None:
        with uow_factory() as uow:
            assert uow.repo.get_clock() is None
            uow.repo.write(ChangeSet(clock=T0))
            assert uow.repo.get_clock() == T0
            uow.commit()
        with uow_factory() as uow:
            assert uow.repo.get_clock() == T0
            uow.repo.write(ChangeSet(clock=T0 + timedelta(seconds=1)))
            uow.commit()
        with uow_factory() as uow:
            assert uow.repo.get_clock() == T0 + timedelta(seconds=1)


def _normalised(parked: ParkedInput) -> ParkedInput:
    """What a store hands back: headers as a tuple of (name, bytes) pairs."""
    return replace(parked, headers=tuple((n, bytes(v)) for n, v in parked.headers))
