"""`Decider.apply(dossier, event) -> Decision`: the pure, deterministic heart.

Business time comes only from the input's `time`; the same catalogue, calendar and inputs
always give the same dossiers and outputs, which is what makes replay an audit tool.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from engine.calendar import VN_TZ, WorkingCalendar
from engine.dossier import (
    Applied,
    Decision,
    Dossier,
    NotYetApplicable,
    Rejected,
    acting_level,
    caused_by,
    evolve,
)
from engine.events import (
    DEADLINE_TOPIC,
    FEE_DISCOUNT_TOPIC,
    STATUS_TOPIC,
    TYPE_PREFIX,
    InboundEvent,
    OutboundEvent,
)
from engine.history import ENGINE_TOPIC
from engine.machine import CompiledWorkflow, GuardCheck
from engine.procedures import (
    FINISHED_STATUS_CODES,
    MIGRATED_TYPE,
    STATUS_LABELS,
    Catalogue,
    DiscountRule,
    MigrationPlan,
    ProcedureVersion,
)
from engine.registry import AGENCY_CODE, LEVELS, Agency, Ending, Registry, day_of

WORKING_DAY_SECONDS = 8 * 3600


def _guard_reschedule_once(dossier: Dossier, event: InboundEvent) -> str | None:
    if dossier.rescheduled:
        return "a dossier may be rescheduled only once"
    try:
        new_due = datetime.fromisoformat(str(event.data["new_due"]))
    except (KeyError, ValueError):
        return "new_due is missing or not a date-time"
    if dossier.due_at is not None and new_due <= dossier.due_at:
        return "the new appointment must be later than the current one"
    return None


def _guard_fees_paid(dossier: Dossier, event: InboundEvent) -> str | None:
    if dossier.payment_requested and not dossier.paid:
        return "the requested payment has not been completed"
    return None


GUARDS: dict[str, GuardCheck] = {
    "reschedule_once": _guard_reschedule_once,
    "fees_paid": _guard_fees_paid,
}


class Decider:
    """Decides inputs for every procedure of a catalogue; holds no dossier state.

    With a `registry` (contract 1.1) an input applies only when its sender may say it: see
    `who_may_not_say`. Without one every sender is trusted, as in version 1, except that an
    agency still acts only on the dossiers it holds.
    """

    def __init__(
        self, catalogue: Catalogue, calendar: WorkingCalendar, registry: Registry | None = None
    ) -> None:
        self.catalogue = catalogue
        self.calendar = calendar
        self.registry = registry
        # Compiled on first use: a province's catalogue has 1,000+ versions, most of which a
        # given engine process may never see, and start-up should not pay for them all.
        self._machines: dict[tuple[str, int], CompiledWorkflow] = {}
        # Whether the engine ever takes a step of its own (a migration, a handover): only
        # then does a batch keep its partitions' clocks and scan for them.
        self.takes_own_steps = bool(catalogue.migrations()) or (
            registry is not None and bool(registry.endings())
        )

    def workflow(self, code: str, version: int) -> CompiledWorkflow:
        key = (code, version)
        compiled = self._machines.get(key)
        if compiled is None:
            definition = self.catalogue.get(code, version)
            if definition is None:
                raise KeyError(f"no procedure {code} version {version} in the catalogue")
            compiled = self._machines[key] = CompiledWorkflow(definition, GUARDS)
        return compiled

    # -----------------------------------------------------------------------------------------
    def apply(self, dossier: Dossier | None, event: InboundEvent) -> Decision:
        if self.registry is not None:
            # Who may say it comes first, before the dossier is looked at: an input that would
            # otherwise be parked for its order (its dossier not there yet) is refused now if
            # its sender is not who it claims, and a forger learns nothing about the dossier.
            refused = who_may_not_say(self.registry, event)
            if refused is not None:
                return Rejected("unauthenticated", refused)
        if event.short_type == "submitted":
            if dossier is not None:
                return Rejected("invalid-transition", f"dossier {event.subject} already exists")
            return self._submit(event)
        if dossier is None:
            # The submission travels on another topic and may simply not have arrived yet.
            return NotYetApplicable(f"dossier {event.subject} is not known yet")
        compiled = self.workflow(dossier.procedure, dossier.workflow_version)
        fired = compiled.fire(dossier, event)
        if fired is None:
            return self._diagnose(compiled, dossier, event)
        # Money is checked once the workflow accepts the input here and now: an early payment
        # is parked for its order, not refused for an amount nothing has asked for yet.
        kind = event.short_type
        if kind == "payment-requested":
            forged = _fee_override(compiled.version, event.data)
            if forged is not None:
                return Rejected("schema", forged)
        elif kind == "payment-completed":
            mismatch = _payment_mismatch(dossier, event.data)
            if mismatch is not None:
                return Rejected("invalid-transition", mismatch)
        return self._effects(compiled.version, dossier, event, fired.dest)

    def _diagnose(
        self, compiled: CompiledWorkflow, dossier: Dossier, event: InboundEvent
    ) -> Decision:
        guard_failure = compiled.last_guard_failure()
        if guard_failure is not None:
            return Rejected("invalid-transition", guard_failure)
        if compiled.holder_mismatch(dossier, event):
            return Rejected(
                "unauthenticated",
                f"agency {event.data.get('agency')} does not hold the dossier "
                f"(held by {dossier.agency})",
            )
        if compiled.applicable_later(dossier.state, event, dossier):
            return NotYetApplicable(
                f"{event.short_type} from {event.origin_level or 'submission'} "
                f"not applicable in state {dossier.state} yet"
            )
        return Rejected(
            "invalid-transition",
            f"{event.short_type} from {event.origin_level or 'submission'} "
            f"is never applicable after state {dossier.state}",
        )

    # -----------------------------------------------------------------------------------------
    def _submit(self, event: InboundEvent) -> Decision:
        data = event.data
        procedure_code = str(data.get("procedure", ""))
        version = self.catalogue.in_force(procedure_code, event.time)
        if version is None:
            known = self.catalogue.versions(procedure_code)
            detail = (
                f"procedure {procedure_code!r} has no version in force on "
                f"{event.time.astimezone(VN_TZ).date()}"
                if known
                else f"unknown procedure {procedure_code!r}"
            )
            return Rejected("unknown-procedure", detail)
        forged = _fee_override(version, data)
        if forged is not None:
            return Rejected("schema", forged)
        applicant = data.get("applicant") or {}
        initial = version.states[version.initial]
        dossier = Dossier(
            code=event.subject,
            procedure=version.code,
            workflow_version=version.version,
            group=version.group,
            state=version.initial,
            status_code=initial.status_code,
            level=initial.level or version.receiving_level,
            agency=str(data.get("agency", "")),
            receiving_agency=str(data.get("agency", "")),
            channel=int(data.get("channel", 1)),
            full_online=bool(data.get("full_online", False)),
            vneid_authenticated=bool(data.get("vneid_authenticated", False)),
            digitised=bool(data.get("digitised", False)),
            applicant_kind=str(applicant.get("kind", "citizen")),
            submitted_at=event.time,
            last_event_at=event.time,
            inputs_applied=1,
            sequence=1,
        )
        outputs = [self._status_event(dossier, event)]
        dossier = self._grant_discounts(version, dossier, event, _fee_amounts(data), outputs)
        return Applied(dossier, tuple(outputs), previous_state=None)

    def _effects(
        self, version: ProcedureVersion, before: Dossier, event: InboundEvent, dest: str
    ) -> Applied:
        kind = event.short_type
        data = event.data
        state = version.states[dest]
        changes: dict[str, Any] = {
            "state": dest,
            "status_code": state.status_code,
            "last_event_at": max(before.last_event_at, event.time),
            "inputs_applied": before.inputs_applied + 1,
        }
        if state.level is not None:
            changes["level"] = acting_level(before, state.level)
        if state.final:
            changes["final"] = True
        if state.status_code in FINISHED_STATUS_CODES and before.finished_at is None:
            changes["finished_at"] = event.time
        outputs: list[OutboundEvent] = []
        calendar = self.calendar
        days = version.deadline.working_days

        if kind == "received":
            changes["received_at"] = event.time
            changes["due_at"] = calendar.due_at(event.time, float(days))
        elif kind == "transferred":
            changes["level"] = str(data["to_level"])
            changes["agency"] = str(data["to_agency"])
            if state.level in before.acting_levels:
                # The agency it goes to acts at its own level: a successor that acted for this
                # level since a handover does no longer (the commune a province sends a result
                # back to returns it from dossier.commune).
                changes["acting_levels"] = {
                    k: v for k, v in before.acting_levels.items() if k != state.level
                }
        elif kind == "supplement-requested":
            changes["paused_at"] = event.time
        elif kind == "supplement-provided" and before.paused_at is not None:
            paused = calendar.working_seconds_between(
                calendar.clock_start(before.paused_at), calendar.clock_start(event.time)
            )
            changes["paused_seconds"] = before.paused_seconds + max(0, paused)
            changes["paused_at"] = None
            if version.deadline.supplementation == "restart" or before.due_at is None:
                # Decree 61/2018 art. 19.4: the processing time starts again from zero.
                changes["due_at"] = calendar.due_at(event.time, float(days))
            else:
                changes["due_at"] = calendar.add_working_seconds(before.due_at, max(0, paused))
        elif kind == "payment-requested":
            changes["payment_requested"] = True
            changes["paid"] = False
            changes["fees"] = dict(before.fees) | _fee_amounts(data)
        elif kind == "payment-completed":
            changes["paid"] = True
            changes["paid_online"] = bool(data.get("online", False))
        elif kind == "rescheduled":
            changes["due_at"] = datetime.fromisoformat(str(data["new_due"]))
            changes["rescheduled"] = True
        elif kind == "resolved":
            changes["outcome"] = str(data.get("outcome", "approved"))

        if (
            dest != before.state
            or changes.get("level", before.level) != before.level
            or changes.get("agency", before.agency) != before.agency
            or changes.get("due_at", before.due_at) != before.due_at
        ):
            changes["sequence"] = before.sequence + 1
            after = evolve(before, **changes)
            outputs.append(self._status_event(after, event))
        else:
            after = evolve(before, **changes)
        if kind == "payment-requested":
            after = self._grant_discounts(version, after, event, _fee_amounts(data), outputs)
        elif kind == "withdrawal-requested" and not after.paid and after.discounts:
            after = self._revoke_discounts(version, after, event, outputs)
        return Applied(after, tuple(outputs), previous_state=before.state)

    # -----------------------------------------------------------------------------------------
    def handover_due(
        self, dossier: Dossier | None, input_time: datetime | None, clock: datetime | None
    ) -> Ending | None:
        """Contract 1.1, "Handover": the ending that hands `dossier` over now, if one does.

        A dossier that is not final, held by an agency whose window has ended, passes to the
        successor just before an input dated at or after the cutover (`input_time`), and once
        the business `clock` has passed the cutover, unless it was opened after that (a
        backfill: its inputs dated before the cutover still reach the agency that ended).
        """
        if dossier is None or dossier.final or self.registry is None:
            return None
        ending = self.registry.ending_of(dossier.agency)
        if ending is None:
            return None
        return ending if _past_cutover(ending.cutover, dossier, input_time, clock) else None

    def migration_due(
        self, dossier: Dossier | None, input_time: datetime | None, clock: datetime | None
    ) -> MigrationPlan | None:
        """The plan that moves `dossier` to another workflow version now, if one does: as a
        handover (`handover_due`), just before an input dated at or after the plan's cutover,
        and once the business `clock` has passed it unless the dossier is a backfill. A dossier
        in a state the plan does not map is not moved (it is refused: `dossier workflows
        migrate --dry-run` lists it)."""
        if dossier is None or dossier.final:
            return None
        plan = self.catalogue.migration_from(dossier.procedure, dossier.workflow_version)
        if plan is None or not plan.maps(dossier.state):
            return None
        return plan if _past_cutover(plan.cutover, dossier, input_time, clock) else None

    def step_due(
        self, dossier: Dossier | None, input_time: datetime | None, clock: datetime | None
    ) -> MigrationPlan | Ending | None:
        """The engine's own next step on `dossier` now: a migration first (the new version's
        levels are the ones a handover then moves on), then a handover."""
        plan = self.migration_due(dossier, input_time, clock)
        if plan is not None:
            return plan
        return self.handover_due(dossier, input_time, clock)

    def migrate(self, dossier: Dossier, migration: InboundEvent) -> Applied:
        """The dossier under its plan's new version: the mapped state, its status code and
        level (a step its holder's successor acts on stays theirs), the appointment, fees,
        discounts and history as they were; one status-changed caused by the migration.

        `migration` is the engine's own entry (`migration_event`): its `time` is the cutover."""
        plan = self.catalogue.migration_from(dossier.procedure, dossier.workflow_version)
        if plan is None or dossier.final or not plan.maps(dossier.state):
            raise ValueError(f"dossier {dossier.code} has no migration to make")
        target = self.workflow(plan.procedure, plan.to_version).version
        state = target.states[plan.states[dossier.state]]
        acting = {
            plan.level(workflow_level): level
            for workflow_level, level in sorted(dossier.acting_levels.items())
            if plan.level(workflow_level) != level
        }
        level = dossier.level if state.level is None else acting.get(state.level, state.level)
        after = evolve(
            dossier,
            workflow_version=target.version,
            group=target.group,
            state=state.name,
            status_code=state.status_code,
            level=level,
            acting_levels=acting,
            sequence=dossier.sequence + 1,
            inputs_applied=dossier.inputs_applied + 1,
        )
        return Applied(after, (self._status_event(after, migration),), previous_state=dossier.state)

    def take_step(self, dossier: Dossier, entry: InboundEvent) -> Applied:
        """The engine's own entry `entry` (a migration's or a handover's) applied to `dossier`."""
        if entry.type == MIGRATED_TYPE:
            return self.migrate(dossier, entry)
        return self.hand_over(dossier, entry)

    def hand_over(self, dossier: Dossier, handover: InboundEvent) -> Applied:
        """The dossier as its agency's successor holds it: same state, same appointment, the
        successor's code and level, the workflow's step at the ended agency's level acted on
        from the successor's level; one status-changed caused by the handover.

        `handover` is the engine's own entry (`handover_event`): its `time` is the cutover."""
        assert self.registry is not None
        ending = self.registry.ending_of(dossier.agency)
        if ending is None or dossier.final:
            raise ValueError(f"dossier {dossier.code} has no handover to make")
        step_level = self._step_level(dossier)
        successor = ending.successor_for(step_level)
        acting = dict(dossier.acting_levels)
        # Steps already acted on from the ended level move on with it.
        for workflow_level, level in list(acting.items()):
            if level == dossier.level:
                acting[workflow_level] = successor.level
        acting[step_level] = successor.level
        acting = {k: v for k, v in acting.items() if k != v}
        after = evolve(
            dossier,
            agency=successor.code,
            level=successor.level,
            acting_levels=acting,
            sequence=dossier.sequence + 1,
            inputs_applied=dossier.inputs_applied + 1,
        )
        return Applied(after, (self._status_event(after, handover),), previous_state=dossier.state)

    def _step_level(self, dossier: Dossier) -> str:
        """The workflow level of the dossier's current step."""
        version = self.workflow(dossier.procedure, dossier.workflow_version).version
        step_level = version.states[dossier.state].level
        if step_level is None:
            # A state of no level (none is open today): the level the dossier is at.
            acting = dossier.acting_levels
            return next((k for k, v in acting.items() if v == dossier.level), dossier.level)
        return step_level

    def successor_of(self, dossier: Dossier, ending: Ending) -> Agency:
        """Who takes `dossier` when its agency ends: the successor named for the level of its
        current step (a district's dossier at a commune step goes to a commune), else the
        agency's successor."""
        return ending.successor_for(self._step_level(dossier))

    def own_entry(
        self, step: MigrationPlan | Ending, dossier: Dossier, engine_source: str
    ) -> InboundEvent:
        """The engine's own history entry for a step `step_due` found on `dossier`."""
        if isinstance(step, MigrationPlan):
            return migration_event(step, dossier.code, engine_source)
        return handover_event(step, dossier.code, engine_source, self.successor_of(dossier, step))

    # -----------------------------------------------------------------------------------------
    @staticmethod
    def _status_event(dossier: Dossier, event: InboundEvent) -> OutboundEvent:
        """The status-changed event of a dossier whose `sequence` was just bumped."""
        sequence = dossier.sequence
        label, _portal = STATUS_LABELS[dossier.status_code]
        due = dossier.due_at
        return OutboundEvent(
            topic=STATUS_TOPIC,
            key=dossier.code,
            id=f"{dossier.code}/status/{sequence}",
            type=f"{TYPE_PREFIX}status-changed",
            time=event.time,
            data={
                "procedure": dossier.procedure,
                "workflow_version": dossier.workflow_version,
                "state": dossier.state,
                "status_code": dossier.status_code,
                "status_label": label,
                "level": dossier.level,
                "agency": dossier.agency,
                "received_at": _iso(dossier.received_at),
                "due_at": _iso(due),
                "overdue": due is not None and event.time > due,
                "sequence": sequence,
                "caused_by": caused_by(event),
            },
        )

    def _grant_discounts(
        self,
        version: ProcedureVersion,
        dossier: Dossier,
        event: InboundEvent,
        variable_fees: dict[str, int],
        outputs: list[OutboundEvent],
    ) -> Dossier:
        submitted_on = dossier.submitted_at.astimezone(VN_TZ).date()
        granted = dict(dossier.discounts)
        for fee_code, fee in version.fees.items():
            if fee_code in granted:
                continue  # at most one grant per (dossier, fee)
            base = variable_fees.get(fee_code, dossier.fees.get(fee_code, fee.amount))
            rule = _rule_in_force(version, fee_code, dossier, submitted_on)
            if rule is None or base <= 0:
                continue
            payable = rule.payable(base)
            discount = base - payable
            if discount <= 0:
                continue
            granted[fee_code] = discount
            outputs.append(
                self._discount_event("granted", version, dossier, event, rule, base, discount)
            )
        if len(granted) == len(dossier.discounts):
            return dossier  # nothing granted: grants are only ever added here
        return evolve(dossier, discounts=granted)

    def _revoke_discounts(
        self,
        version: ProcedureVersion,
        dossier: Dossier,
        event: InboundEvent,
        outputs: list[OutboundEvent],
    ) -> Dossier:
        submitted_on = dossier.submitted_at.astimezone(VN_TZ).date()
        for fee_code, discount in sorted(dossier.discounts.items()):
            rule = _rule_in_force(version, fee_code, dossier, submitted_on)
            base = dossier.fees.get(fee_code, version.fees[fee_code].amount)
            assert rule is not None  # a grant implies its rule applied at submission
            outputs.append(
                self._discount_event("revoked", version, dossier, event, rule, base, discount)
            )
        return evolve(dossier, discounts={})

    @staticmethod
    def _discount_event(
        kind: str,
        version: ProcedureVersion,
        dossier: Dossier,
        event: InboundEvent,
        rule: DiscountRule,
        base: int,
        discount: int,
    ) -> OutboundEvent:
        return OutboundEvent(
            topic=FEE_DISCOUNT_TOPIC,
            key=dossier.code,
            id=f"{dossier.code}/fee-discount/{rule.fee_code}/{kind}",
            type=f"{TYPE_PREFIX}fee-discount-{kind}",
            time=event.time,
            data={
                "procedure": dossier.procedure,
                "fee_code": rule.fee_code,
                "base_amount": base,
                "discount_amount": discount,
                "payable_amount": base - discount,
                "rule": rule.id,
                "legal_basis": rule.legal_basis,
                "channel": dossier.channel,
                "caused_by": caused_by(event),
            },
        )

    # -----------------------------------------------------------------------------------------
    def deadline_notices(
        self, dossier: Dossier, now: datetime
    ) -> tuple[Dossier, tuple[OutboundEvent, ...]]:
        """Warnings one working day before the due time and overdue notices after it.

        Each is emitted at most once per dossier and due date; `now` is the engine clock
        (business time by default), so a replay emits the same notices.
        """
        due = dossier.due_at
        if due is None or dossier.final or dossier.finished_at is not None:
            return dossier, ()
        if dossier.paused_at is not None:
            return dossier, ()  # the agency is waiting for the applicant
        calendar = self.calendar
        if now > due and dossier.overdue_due != due:
            late = calendar.working_seconds_between(due, now)
            notice = self._deadline_event(dossier, now, "overdue", "working_hours_late", late)
            return evolve(dossier, overdue_due=due, warned_due=due), (notice,)
        if dossier.warned_due != due and now <= due:
            warn_at = calendar.add_working_seconds(due, -WORKING_DAY_SECONDS)
            if now >= warn_at:
                left = calendar.working_seconds_between(now, due)
                notice = self._deadline_event(
                    dossier, now, "deadline-warning", "working_hours_left", left
                )
                return evolve(dossier, warned_due=due), (notice,)
        return dossier, ()

    def next_notice_at(self, dossier: Dossier) -> datetime | None:
        """When `deadline_notices` will next have something to say, so storage can index it."""
        due = dossier.due_at
        if due is None or dossier.final or dossier.finished_at is not None:
            return None
        if dossier.paused_at is not None:
            return None
        if dossier.warned_due != due:
            return self.calendar.add_working_seconds(due, -WORKING_DAY_SECONDS)
        if dossier.overdue_due != due:
            return due + timedelta(microseconds=1)
        return None

    @staticmethod
    def _deadline_event(
        dossier: Dossier, now: datetime, kind: str, hours_field: str, seconds: int
    ) -> OutboundEvent:
        assert dossier.due_at is not None
        return OutboundEvent(
            topic=DEADLINE_TOPIC,
            key=dossier.code,
            id=f"{dossier.code}/{kind}/{dossier.due_at.isoformat()}",
            type=f"{TYPE_PREFIX}{kind}",
            time=now,
            data={
                "procedure": dossier.procedure,
                "level": dossier.level,
                "agency": dossier.agency,
                "due_at": dossier.due_at.isoformat(),
                hours_field: round(max(0, seconds) / 3600, 2),
            },
        )


# ---------------------------------------------------------------------------------------------
# Contract 1.1, "Rules": who may say what. Each refusal's detail starts with the rule's name and
# names agencies by their registered codes only: never the input's personal data.
# ---------------------------------------------------------------------------------------------


def who_may_not_say(registry: Registry, event: InboundEvent) -> str | None:
    """Why the input's sender may not say it (the rule that failed), or None when it may.

    On a level's topic: the agency in `data.agency` is registered at that level, lists the
    input's `source` among its sources, and acts on the input's local date; a transfer's
    `to_agency` is registered at `to_level` and acts on that date. On `dossier.submission`: the
    source is a registered sender allowed the type; a submission's receiving agency is
    registered, acts on the submission's date, is one the sender may submit to, and is the
    agency part of the dossier code.
    """
    day = day_of(event.time)
    data = event.data
    level = event.origin_level
    if level is None:
        sender = registry.sender(event.source)
        if sender is None:
            return (
                "sender-unregistered: the source is not a registered sender of dossier.submission"
            )
        kind = event.short_type
        if not sender.may_send(kind):
            return (
                f"sender-type: sender {sender.source} may not send {kind} "
                f"(it may send {', '.join(sorted(sender.types))})"
            )
        if kind != "submitted":
            return None
        code = data.get("agency")
        agency = registry.agency(str(code))
        if agency is None:
            return (
                f"receiving-agency-unregistered: submitted.agency {_code(code)} is not registered"
            )
        if not sender.may_submit_to(agency.code):
            return f"sender-agency: sender {sender.source} may not submit to agency {agency.code}"
        if not agency.acts_on(day):
            return _window("receiving-agency-window", agency, day)
        prefix = event.subject.split("-", 1)[0]
        if prefix != agency.code:
            return (
                f"dossier-code-agency: dossier code {event.subject} belongs to agency {prefix}, "
                f"not to the receiving agency {agency.code}"
            )
        return None
    code = data.get("agency")
    agency = registry.agency(str(code))
    if agency is None:
        return f"agency-unregistered: data.agency {_code(code)} is not registered"
    if event.source not in agency.sources:
        return (
            f"agency-source: the source is not one of agency {agency.code}'s "
            f"({', '.join(agency.sources)})"
        )
    if agency.level != level:
        return (
            f"agency-level: agency {agency.code} is registered at the {agency.level} level, "
            f"not on dossier.{level}"
        )
    if not agency.acts_on(day):
        return _window("agency-window", agency, day)
    if event.short_type == "transferred":
        target_code = data.get("to_agency")
        target = registry.agency(str(target_code))
        if target is None:
            return (
                f"to-agency-unregistered: transferred.to_agency {_code(target_code)} "
                "is not registered"
            )
        to_level = data.get("to_level")
        if target.level != to_level:
            return (
                f"to-agency-level: agency {target.code} is registered at the {target.level} "
                f"level, not at to_level {to_level if to_level in LEVELS else '(not a level)'}"
            )
        if not target.acts_on(day):
            return _window("to-agency-window", target, day)
    return None


HANDED_OVER_TYPE = f"{TYPE_PREFIX}handed-over"


def _past_cutover(
    cutover: datetime, dossier: Dossier, input_time: datetime | None, clock: datetime | None
) -> bool:
    """Whether a step due at `cutover` is taken now: before an input dated at or after it, or
    once the business `clock` has passed it, unless the dossier was opened after that (a
    backfill, whose inputs dated before the cutover still apply as they were)."""
    if input_time is not None and input_time >= cutover:
        return True
    if clock is None or clock < cutover:
        return False
    return dossier.opened_clock is None or dossier.opened_clock < cutover


def migration_event(plan: MigrationPlan, dossier_code: str, engine_source: str) -> InboundEvent:
    """The engine's own entry in a dossier's history for a migration: from the engine's
    source, id `migration:<procedure>:v<from>-v<to>:<effective date>`, at the plan's cutover."""
    return InboundEvent(
        source=engine_source,
        id=plan.entry_id,
        type=MIGRATED_TYPE,
        subject=dossier_code,
        time=plan.cutover,
        data={
            "procedure": plan.procedure,
            "from_version": plan.from_version,
            "to_version": plan.to_version,
            "effective": plan.effective.isoformat(),
            "basis": plan.basis,
        },
        topic=ENGINE_TOPIC,
    )


def handover_event(
    ending: Ending, dossier_code: str, engine_source: str, successor: Agency | None = None
) -> InboundEvent:
    """The engine's own entry in a dossier's history for a handover (contract 1.1): from the
    engine's source, id `handover:<agency>:<cutover date>`, at the cutover, to `successor`
    (`Decider.successor_of`; by default the agency's successor)."""
    successor = successor or ending.successor
    return InboundEvent(
        source=engine_source,
        id=ending.handover_id,
        type=HANDED_OVER_TYPE,
        subject=dossier_code,
        time=ending.cutover,
        data={
            "agency": ending.agency.code,
            "level": ending.agency.level,
            "to_agency": successor.code,
            "to_level": successor.level,
            "cutover": ending.cutover.isoformat(),
            "basis": ending.agency.successor_basis,
        },
        topic=ENGINE_TOPIC,
    )


def _window(rule: str, agency: Agency, day: date) -> str:
    return f"{rule}: agency {agency.code} acts from {agency.window}, not on {day} (local date)"


def _code(value: Any) -> str:
    """An agency code as the input gave it, quoted only when it looks like one: any other text
    (which could be anything, a name included) is not repeated."""
    if isinstance(value, str) and len(value) <= 40 and AGENCY_CODE.fullmatch(value):
        return value
    if value is None:
        return "(missing)"
    return "(not an agency code)"


def _fee_amounts(data: Any) -> dict[str, int]:
    return {str(f["code"]): int(f["amount"]) for f in data.get("fees") or ()}


def _fee_override(version: ProcedureVersion, data: Any) -> str | None:
    """Why the fees an input names are not its to set (contract 1.1, "Money"), or None."""
    for fee_code, amount in _fee_amounts(data).items():
        fee = version.fees.get(fee_code)
        if fee is None:
            return f"fees: {fee_code!r} is not a fee of procedure {version.code} v{version.version}"
        if not fee.variable and amount != fee.amount:
            return (
                f"fees: {fee_code} is fixed at {fee.amount} VND by the catalogue; an input may "
                f"set only variable fees (got {amount})"
            )
    return None


def payable_amount(dossier: Dossier) -> int:
    """What the applicant owes for the fees requested: each fee less its discount."""
    return sum(
        max(0, amount - dossier.discounts.get(fee_code, 0))
        for fee_code, amount in dossier.fees.items()
    )


def _payment_mismatch(dossier: Dossier, data: Any) -> str | None:
    if not dossier.payment_requested:
        return None
    paid, payable = int(data.get("amount", 0)), payable_amount(dossier)
    if paid == payable:
        return None
    return f"payment of {paid} VND does not match the {payable} VND payable after discounts"


def _rule_in_force(
    version: ProcedureVersion, fee_code: str, dossier: Dossier, submitted_on: date
) -> DiscountRule | None:
    for rule in version.discounts:
        if rule.fee_code == fee_code and rule.applies(
            channel=dossier.channel, full_online=dossier.full_online, submitted_on=submitted_on
        ):
            return rule
    return None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
