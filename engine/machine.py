"""One compiled `transitions` machine per (procedure, version), shared by every dossier.

`transitions` binds a machine to model objects; `Machine.add_model` for every dossier grows
the machine's model list, so adding N dossiers costs O(N^2) and keeps them all in memory (see
bench/engine_apply.py). Instead each compiled machine owns one cursor model: to decide an
input, the engine loads the dossier's state into the cursor, fires the trigger, and reads the
state back. Conditions are evaluated against the input the cursor carries, so the machine is
the single place where "which transition fires" is decided.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from transitions import EventData, Machine

from engine.dossier import Dossier, acting_level
from engine.events import LEVEL_TOPICS, InboundEvent
from engine.procedures import ProcedureVersion, TransitionDef


class _Cursor:
    """The machine's only model; carries the input being decided.

    No __slots__: transitions attaches trigger and `is_<state>` methods to its models.
    """

    def __init__(self, initial: str) -> None:
        self.state = initial
        self.dossier: Dossier | None = None
        self.event: InboundEvent | None = None
        self.fired: TransitionDef | None = None
        self.guard_failure: str | None = None
        self.event_data: EventData | None = None


GuardCheck = Callable[[Dossier, InboundEvent], str | None]


@dataclass(frozen=True, slots=True)
class Fired:
    transition: TransitionDef
    dest: str


class CompiledWorkflow:
    def __init__(self, version: ProcedureVersion, guards: Mapping[str, GuardCheck]) -> None:
        self.version = version
        self._guards = guards
        # One cursor per thread: the write-behind pipeline may process a batch again in its
        # writer thread while the next batch is applied in another, on these same machines.
        self._cursors = threading.local()
        self.machine = Machine(
            model=_Cursor(version.initial),
            states=list(version.states),
            initial=version.initial,
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=False,
            model_attribute="state",
        )
        for definition in version.transitions:
            self.machine.add_transition(
                trigger=definition.event,
                source=list(definition.sources),
                dest=definition.dest,  # None makes an internal transition: no exit/enter
                conditions=[self._condition_for(definition)],
            )
        self._reachable = self._reachable_events()
        self._states = dict(self.machine.states)

    def _condition_for(self, definition: TransitionDef) -> Callable[[EventData], bool]:
        guards = [(name, self._guards[name]) for name in definition.guards]
        level = definition.level
        when = tuple(definition.when.items())

        def condition(event_data: EventData) -> bool:
            cursor = cast(_Cursor, event_data.model)
            event, dossier = cursor.event, cursor.dossier
            assert event is not None and dossier is not None
            # Level, `when` and holder checks inline (`_when_matches` for the rest of the
            # module): this runs for every candidate transition of every input.
            acting = level
            if level is not None and dossier.acting_levels:
                acting = acting_level(dossier, level)
            if LEVEL_TOPICS.get(event.topic) != acting:
                return False
            if when:
                data = event.data
                for key, expected in when:
                    if str(data.get(key)) != expected:
                        return False
            # Level topics speak for an agency: only the agency holding the dossier may act.
            if level is not None and event.data.get("agency") != dossier.agency:
                return False
            for name, check in guards:
                failure = check(dossier, event)
                if failure is not None:
                    cursor.guard_failure = f"guard {name}: {failure}"
                    return False
            cursor.fired = definition
            return True

        return condition

    def fire(self, dossier: Dossier, event: InboundEvent) -> Fired | None:
        """The transition the input fires from the dossier's state, or None.

        The machine's own transition table and condition objects decide, in declaration
        order, exactly as `Event.trigger` would. What is skipped is `Transition.execute`'s
        state-change machinery (exit/enter callbacks, model update, logging): the new state
        lives in the dossier's next immutable snapshot, not in a model attribute, and that
        machinery was half the cost of apply() (bench/engine_apply.py).
        """
        cursor = self._cursor()
        # Reset before any early return: a stale guard failure would turn a later input that
        # merely has no transition from this state into a wrong dead letter.
        cursor.fired, cursor.guard_failure = None, None
        machine_event = self.machine.events.get(event.short_type)
        if machine_event is None:
            return None
        candidates = machine_event.transitions.get(dossier.state)
        if not candidates:
            return None
        cursor.state, cursor.dossier, cursor.event = dossier.state, dossier, event
        # One EventData per cursor, pointed at this input's state and trigger: the conditions
        # read only its model (the cursor), and building one per input cost ~2 µs.
        event_data = cursor.event_data
        if event_data is None:
            event_data = EventData(None, None, self.machine, cursor, (), {})
            cursor.event_data = event_data
        event_data.state, event_data.event = self._states[dossier.state], machine_event
        try:
            for transition in candidates:
                for condition in transition.conditions:
                    if not condition.check(event_data):
                        break
                else:
                    assert cursor.fired is not None
                    return Fired(cursor.fired, transition.dest or dossier.state)
            return None
        finally:
            cursor.dossier = cursor.event = None

    def last_guard_failure(self) -> str | None:
        """Why the calling thread's last `fire` found no transition, if a guard said so."""
        return self._cursor().guard_failure

    def _cursor(self) -> _Cursor:
        cursor: _Cursor | None = getattr(self._cursors, "cursor", None)
        if cursor is None:
            cursor = self._cursors.cursor = _Cursor(self.version.initial)
        return cursor

    def holder_mismatch(self, dossier: Dossier, event: InboundEvent) -> bool:
        """True when a transition would fire but for the acting agency."""
        for definition in self.version.transitions:
            if (
                definition.event == event.short_type
                and dossier.state in definition.sources
                and event.origin_level is not None
                and definition.level is not None
                # Its own level, or the one acting for it since a handover: an ended agency's
                # input is told that it no longer holds the dossier.
                and event.origin_level
                in (definition.level, acting_level(dossier, definition.level))
                and _when_matches(definition, event)
                and event.data.get("agency") != dossier.agency
            ):
                return True
        return False

    def applicable_later(
        self, state: str, event: InboundEvent, dossier: Dossier | None = None
    ) -> bool:
        """Whether this kind of input fires from some state reachable from `state` (at the
        levels that act for the dossier's steps, when it is given)."""
        kind, origin = event.short_type, event.origin_level
        return any(
            d.event == kind
            and (
                d.level == origin
                if d.level is None or dossier is None
                else acting_level(dossier, d.level) == origin
            )
            and _when_matches(d, event)
            for d in self._reachable.get(state, ())
        )

    def _reachable_events(self) -> dict[str, tuple[TransitionDef, ...]]:
        successors: dict[str, set[str]] = {name: set() for name in self.version.states}
        for definition in self.version.transitions:
            for source in definition.sources:
                successors[source].add(definition.dest or source)
        reachable: dict[str, tuple[TransitionDef, ...]] = {}
        for start in self.version.states:
            seen, frontier = {start}, [start]
            while frontier:
                for nxt in successors[frontier.pop()]:
                    if nxt not in seen:
                        seen.add(nxt)
                        frontier.append(nxt)
            reachable[start] = tuple(
                d for d in self.version.transitions if seen.intersection(d.sources)
            )
        return reachable

    def mermaid(self) -> str:
        """A Mermaid state diagram, drawn by transitions' own diagram support."""
        from transitions.extensions.diagrams import GraphMachine

        class _Model:
            pass

        model = _Model()
        GraphMachine(
            model=model,
            states=list(self.version.states),
            transitions=[
                {
                    "trigger": _label(d),
                    "source": list(d.sources),
                    "dest": d.dest or None,
                }
                for d in self.version.transitions
            ],
            initial=self.version.initial,
            auto_transitions=False,
            graph_engine="mermaid",
            title=f"{self.version.code} v{self.version.version}",
            show_state_attributes=False,
        )
        diagram: Any = model.get_graph().draw(None)  # type: ignore[attr-defined]
        return str(diagram)


def _label(definition: TransitionDef) -> str:
    where = f"@{definition.level}" if definition.level else "@submission"
    extra = "".join(f" {k}={v}" for k, v in definition.when.items())
    return f"{definition.event} {where}{extra}"


def _when_matches(definition: TransitionDef, event: InboundEvent) -> bool:
    data = event.data
    return all(str(data.get(k)) == v for k, v in definition.when.items())
