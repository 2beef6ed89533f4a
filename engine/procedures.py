"""Procedures as data: the typed definition the engine runs, loaded and validated from workflows/.

A procedure has one or more versions, each in force for a window of submission dates. A
version is either written out (states and transitions) or instantiated from a template with
parameters, so a province's 1,000+ procedures share a handful of shapes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from string import Template
from typing import Any, Literal

import yaml

from engine.calendar import VN_TZ

INBOUND_TYPES = (
    "submitted",
    "received",
    "reception-refused",
    "processing-started",
    "transferred",
    "supplement-requested",
    "supplement-provided",
    "payment-requested",
    "payment-completed",
    "withdrawal-requested",
    "stopped",
    "rescheduled",
    "resolved",
    "result-returned",
)
# The only types allowed on the submission topic; all others come from a level's topic.
SUBMISSION_TYPES = frozenset(
    {"submitted", "supplement-provided", "payment-completed", "withdrawal-requested"}
)
# Guards a transition may name; their logic lives in engine.dossier.
KNOWN_GUARDS = frozenset({"reschedule_once", "fees_paid"})

STATUS_LABELS: Mapping[int, tuple[str, str]] = {
    1: ("Mới đăng ký", "receiving"),
    2: ("Được tiếp nhận", "new"),
    3: ("Không được tiếp nhận", "denied"),
    4: ("Đang xử lý", "processing"),
    5: ("Yêu cầu bổ sung giấy tờ", "waiting"),
    6: ("Yêu cầu thực hiện nghĩa vụ tài chính", "paying"),
    7: ("Công dân yêu cầu rút hồ sơ", "cancelled"),
    8: ("Dừng xử lý", "unresolved"),
    9: ("Đã xử lý xong", "releasing"),
    10: ("Đã trả kết quả", "done"),
}
# Codes that end the agency's work for the on-time indicator (Decision 766, 2.1).
FINISHED_STATUS_CODES = frozenset({3, 8, 9, 10})

SupplementationPolicy = Literal["restart", "shift"]


@dataclass(frozen=True, slots=True)
class StateDef:
    name: str
    status_code: int
    level: str | None  # None: the dossier stays at the level it was at (e.g. withdrawn)
    final: bool = False


@dataclass(frozen=True, slots=True)
class TransitionDef:
    event: str  # short inbound type, e.g. "received"
    sources: tuple[str, ...]
    dest: str | None  # None: internal (state unchanged, e.g. rescheduled)
    level: str | None  # level whose topic must carry the event; None: the submission topic
    guards: tuple[str, ...] = ()
    when: Mapping[str, str] = field(default_factory=dict)  # data field equalities


@dataclass(frozen=True, slots=True)
class Fee:
    code: str
    amount: int  # whole VND; for a variable fee, the amount when a dossier does not set one
    name: str = ""
    # Contract 1.1, "Money": only a variable fee's amount may come from an input
    # (`submitted.fees`, `payment-requested.fees`); a fixed one is the catalogue's.
    variable: bool = False


@dataclass(frozen=True, slots=True)
class DiscountRule:
    id: str
    fee_code: str
    percent: Decimal | None  # exactly one of percent / amount
    amount: int | None
    channels: frozenset[int]
    full_online: bool  # True: only full-online submissions qualify
    valid_from: date | None
    valid_to: date | None  # inclusive
    legal_basis: str

    def applies(self, *, channel: int, full_online: bool, submitted_on: date) -> bool:
        if channel not in self.channels:
            return False
        if self.full_online and not full_online:
            return False
        if self.valid_from is not None and submitted_on < self.valid_from:
            return False
        return not (self.valid_to is not None and submitted_on > self.valid_to)

    def payable(self, base_amount: int) -> int:
        """What the applicant pays: rounded down to the whole đồng, in the applicant's favour."""
        if self.percent is not None:
            # Integer arithmetic on a scaled percent keeps this exact for any base amount.
            scaled = int(self.percent * 10_000)
            return max(0, base_amount * (1_000_000 - scaled) // 1_000_000)
        assert self.amount is not None
        return max(0, base_amount - self.amount)


@dataclass(frozen=True, slots=True)
class DeadlinePolicy:
    working_days: Decimal
    supplementation: SupplementationPolicy
    per_level: Mapping[str, Decimal] = field(default_factory=dict)

    @property
    def working_seconds(self) -> int:
        return int(self.working_days * 8 * 3600)


@dataclass(frozen=True, slots=True)
class ProcedureVersion:
    code: str
    name: str
    version: int
    effective_from: date
    effective_to: date | None  # inclusive; None: open-ended
    levels: tuple[str, ...]
    receiving_level: str
    returning_level: str
    initial: str
    states: Mapping[str, StateDef]
    transitions: tuple[TransitionDef, ...]
    deadline: DeadlinePolicy
    fees: Mapping[str, Fee]
    discounts: tuple[DiscountRule, ...]
    template: str | None
    group: str  # bounded label for metrics: the template or "custom"
    source_file: str

    def in_force_on(self, day: date) -> bool:
        if day < self.effective_from:
            return False
        return self.effective_to is None or day <= self.effective_to


# The type of the engine's own history entry for a migration (`MigrationPlan.entry_id`).
MIGRATED_TYPE = "vn.gov.dossier.workflow-migrated"


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    """Running dossiers of one procedure version moved to another from a date, like a
    process-instance migration plan but applied by business time: a dossier pinned to
    `from_version`, not final, in a state `states` maps, continues under `to_version` in the
    mapped state, keeping its appointment, fees, discounts and history. A dossier in a state
    the plan does not map is refused: it stays, whole, on its version.

    `levels` renames a workflow level of `from_version` that `to_version` does not have
    (`district -> province`): the mapped states' levels must agree with it."""

    procedure: str
    from_version: int
    to_version: int
    effective: date  # from 00:00 Asia/Ho_Chi_Minh on this day, by the business clock
    states: Mapping[str, str]
    levels: Mapping[str, str]
    basis: str
    source_file: str

    @property
    def cutover(self) -> datetime:
        return datetime.combine(self.effective, datetime.min.time(), VN_TZ)

    @property
    def entry_id(self) -> str:
        """The id of the engine's own history entry (shared by every dossier it moves)."""
        return (
            f"migration:{self.procedure}:v{self.from_version}-v{self.to_version}:"
            f"{self.effective.isoformat()}"
        )

    def maps(self, state: str) -> bool:
        return state in self.states

    def level(self, from_level: str) -> str:
        return self.levels.get(from_level, from_level)


class Catalogue:
    """All procedure versions, by code, ordered by effective date, and the plans that move
    running dossiers between them."""

    def __init__(
        self,
        versions: Iterable[ProcedureVersion],
        migrations: Iterable[MigrationPlan] = (),
    ) -> None:
        self._by_code: dict[str, list[ProcedureVersion]] = {}
        for version in versions:
            self._by_code.setdefault(version.code, []).append(version)
        for versions_of_code in self._by_code.values():
            versions_of_code.sort(key=lambda v: v.effective_from)
        self._migrations = {(m.procedure, m.from_version): m for m in migrations}
        # Read by every batch once a cutover is near: sorted once, the catalogue is immutable.
        self._migrations_in_order = sorted(
            self._migrations.values(), key=lambda m: (m.effective, m.procedure, m.from_version)
        )

    def migration_from(self, code: str, version: int) -> MigrationPlan | None:
        """The plan that moves dossiers pinned to this version, if any."""
        return self._migrations.get((code, version))

    def migrations(self) -> list[MigrationPlan]:
        """Every plan, by effective date then procedure."""
        return list(self._migrations_in_order)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_code.values())

    def codes(self) -> list[str]:
        return sorted(self._by_code)

    def versions(self, code: str) -> Sequence[ProcedureVersion]:
        return self._by_code.get(code, ())

    def all_versions(self) -> Iterator[ProcedureVersion]:
        for versions_of_code in self._by_code.values():
            yield from versions_of_code

    def in_force(self, code: str, at: datetime) -> ProcedureVersion | None:
        """The version a dossier submitted at `at` is pinned to, or None."""
        day = at.astimezone(VN_TZ).date()
        for version in self._by_code.get(code, ()):
            if version.in_force_on(day):
                return version
        return None

    def get(self, code: str, version: int) -> ProcedureVersion | None:
        for candidate in self._by_code.get(code, ()):
            if candidate.version == version:
                return candidate
        return None


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.path}: {self.message}"
            if self.path
            else f"{self.file}: {self.message}"
        )


class WorkflowError(Exception):
    """One or more definitions are invalid; `problems` names each file and field."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def default_workflows_dir() -> Path:
    import workflows

    return Path(workflows.__file__).parent


def load_catalogue(root: Path | None = None) -> Catalogue:
    """Load `templates/*.yaml`, `procedures/**/*.yaml` and `migrations/**/*.yaml` under root;
    raise WorkflowError."""
    root = root or default_workflows_dir()
    problems: list[Problem] = []
    templates = _load_templates(root / "templates", problems)
    versions: list[ProcedureVersion] = []
    procedure_files = sorted((root / "procedures").rglob("*.yaml"))
    if not procedure_files:
        problems.append(Problem(str(root / "procedures"), "", "no procedure definitions found"))
    for path in procedure_files:
        document = _read_yaml(path, problems)
        if document is None:
            continue
        versions.extend(parse_procedures(document, str(path), templates, problems))
    _check_overlaps(versions, problems)
    if problems:
        raise WorkflowError(problems)
    catalogue = Catalogue(versions)
    migrations: list[MigrationPlan] = []
    for path in sorted((root / "migrations").rglob("*.yaml")):
        migrations.extend(load_migration_plans(path, catalogue, problems))
    check_unique_plans(migrations, problems)
    if problems:
        raise WorkflowError(problems)
    return Catalogue(versions, migrations)


def load_migration_plans(
    path: Path, catalogue: Catalogue, problems: list[Problem]
) -> list[MigrationPlan]:
    """The plans of one file, checked against the catalogue's versions; problems appended."""
    document = _read_yaml(path, problems)
    if document is None:
        return []
    return parse_migration_plans(document, str(path), catalogue, problems)


def parse_migration_plans(
    document: Any, file: str, catalogue: Catalogue, problems: list[Problem]
) -> list[MigrationPlan]:
    if not isinstance(document, dict) or not isinstance(document.get("plans"), list):
        problems.append(Problem(file, "plans", "expected a list under 'plans'"))
        return []
    plans: list[MigrationPlan] = []
    for i, raw in enumerate(document["plans"]):
        plan = _parse_plan(raw, catalogue, _Collector(file, f"plans[{i}]", problems))
        if plan is not None:
            plans.append(plan)
    return plans


def _parse_plan(raw: Any, catalogue: Catalogue, problem: _Collector) -> MigrationPlan | None:
    if not isinstance(raw, dict):
        problem("", "expected a mapping")
        return None
    code = raw.get("procedure")
    if not isinstance(code, str) or not catalogue.versions(code):
        problem("procedure", f"unknown procedure {code!r}")
        return None
    numbers: dict[str, ProcedureVersion] = {}
    for key in ("from_version", "to_version"):
        number = raw.get(key)
        version = catalogue.get(code, number) if isinstance(number, int) else None
        if version is None:
            known = [v.version for v in catalogue.versions(code)]
            problem(key, f"procedure {code} has no version {number!r} (versions: {known})")
            return None
        numbers[key] = version
    source, target = numbers["from_version"], numbers["to_version"]
    effective = _date(raw.get("effective"), "effective", problem, required=True)
    if effective is None:
        return None
    before = problem.count
    if source.version == target.version:
        problem("to_version", "a plan moves dossiers to another version")
    if source.effective_to is None or source.effective_to >= effective:
        # Otherwise new dossiers would still be pinned to the version the plan empties.
        problem(
            "effective",
            f"version {source.version} is in force for new dossiers until "
            f"{source.effective_to or 'open end'}: a plan may take effect only after that",
        )
    if not target.in_force_on(effective):
        problem(
            "effective",
            f"version {target.version} is not in force on {effective} "
            f"({target.effective_from} to {target.effective_to or 'open end'})",
        )
    levels = _plan_levels(raw.get("levels"), source, target, problem)
    states = _plan_states(raw.get("states"), source, target, levels, problem)
    basis = raw.get("basis", "")
    if not isinstance(basis, str):
        problem("basis", "must be text: the decision the plan comes from")
    if problem.count > before:
        return None
    return MigrationPlan(
        procedure=code,
        from_version=source.version,
        to_version=target.version,
        effective=effective,
        states=states,
        levels=levels,
        basis=str(basis),
        source_file=problem.file,
    )


def _plan_levels(
    raw: Any, source: ProcedureVersion, target: ProcedureVersion, problem: _Collector
) -> dict[str, str]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problem("levels", "expected a mapping: level of the old version -> level of the new")
        return {}
    levels: dict[str, str] = {}
    images = [str(raw.get(level, level)) for level in source.levels]
    if len(set(images)) < len(images):
        problem("levels", f"two levels of version {source.version} would become one: {images}")
    for old, new in raw.items():
        if str(old) not in source.levels:
            problem(
                f"levels.{old}", f"not a level of version {source.version} {list(source.levels)}"
            )
        elif str(new) not in target.levels:
            problem(
                f"levels.{old}",
                f"{new!r} is not a level of version {target.version} {list(target.levels)}",
            )
        else:
            levels[str(old)] = str(new)
    return levels


def _plan_states(
    raw: Any,
    source: ProcedureVersion,
    target: ProcedureVersion,
    levels: Mapping[str, str],
    problem: _Collector,
) -> dict[str, str]:
    if not isinstance(raw, dict) or not raw:
        problem("states", "a mapping of states is required: state of the old version -> new")
        return {}
    states: dict[str, str] = {}
    for old, new in raw.items():
        where = f"states.{old}"
        old_state = source.states.get(str(old))
        new_state = target.states.get(str(new))
        if old_state is None:
            problem(where, f"no state {old!r} in version {source.version}")
        elif old_state.final:
            problem(where, f"{old!r} is final: a closed dossier never moves")
        elif new_state is None:
            problem(where, f"no state {new!r} in version {target.version}")
        elif (
            old_state.level is not None
            and new_state.level is not None
            and levels.get(old_state.level, old_state.level) != new_state.level
        ):
            # A dossier half-moved: its step at one level, its new state at another.
            problem(
                where,
                f"{old!r} is at level {old_state.level}, {new!r} at {new_state.level}: "
                f"map the level ({old_state.level}: {new_state.level}) or another state",
            )
        else:
            states[str(old)] = str(new)
    return states


def check_unique_plans(plans: Sequence[MigrationPlan], problems: list[Problem]) -> None:
    """A problem for each plan of a version another plan already moves."""
    seen: dict[tuple[str, int], MigrationPlan] = {}
    for plan in plans:
        key = (plan.procedure, plan.from_version)
        if key in seen:
            problems.append(
                Problem(
                    plan.source_file,
                    plan.procedure,
                    f"a second plan for version {plan.from_version} (the first in "
                    f"{seen[key].source_file}): a dossier moves by one plan",
                )
            )
        else:
            seen[key] = plan


_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path, problems: list[Problem]) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            # libyaml's C loader, when present, reads a 1,000-procedure catalogue ~10x faster.
            return yaml.load(handle, Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError) as exc:
        problems.append(Problem(str(path), "", f"cannot read YAML: {exc}"))
        return None


@dataclass(frozen=True, slots=True)
class TemplateDef:
    name: str
    parameters: tuple[str, ...]
    defaults: Mapping[str, Any]
    body: Mapping[str, Any]
    source_file: str


def _load_templates(directory: Path, problems: list[Problem]) -> dict[str, TemplateDef]:
    templates: dict[str, TemplateDef] = {}
    for path in sorted(directory.glob("*.yaml")):
        document = _read_yaml(path, problems)
        if not isinstance(document, dict) or "template" not in document:
            problems.append(
                Problem(str(path), "template", "a template file needs a 'template' name")
            )
            continue
        name = str(document["template"])
        raw_params = document.get("parameters") or {}
        if isinstance(raw_params, list):
            raw_params = {p: None for p in raw_params}
        defaults = {k: v for k, v in raw_params.items() if v is not None}
        body = {
            k: v for k, v in document.items() if k not in {"template", "parameters", "description"}
        }
        templates[name] = TemplateDef(name, tuple(raw_params), defaults, body, str(path))
    return templates


def parse_procedures(
    document: Any,
    file: str,
    templates: Mapping[str, TemplateDef],
    problems: list[Problem],
) -> list[ProcedureVersion]:
    if not isinstance(document, dict) or not isinstance(document.get("procedures"), list):
        problems.append(Problem(file, "procedures", "expected a list under 'procedures'"))
        return []
    versions: list[ProcedureVersion] = []
    for i, raw in enumerate(document["procedures"]):
        where = f"procedures[{i}]"
        if not isinstance(raw, dict):
            problems.append(Problem(file, where, "expected a mapping"))
            continue
        code = raw.get("code")
        if not isinstance(code, str) or not code:
            problems.append(Problem(file, f"{where}.code", "missing procedure code"))
            continue
        raw_versions = raw.get("versions") or [{k: v for k, v in raw.items() if k != "versions"}]
        for j, raw_version in enumerate(raw_versions):
            merged = {k: v for k, v in raw.items() if k != "versions"} | dict(raw_version)
            vpath = f"{where}.versions[{j}]" if "versions" in raw else where
            parsed = _parse_version(merged, file, vpath, templates, problems)
            if parsed is not None:
                versions.append(parsed)
    return versions


class _Collector:
    """Collects problems under a path prefix, so each check is one line."""

    def __init__(self, file: str, path: str, problems: list[Problem]) -> None:
        self.file, self.path, self.problems = file, path, problems
        self.count = 0

    def __call__(self, field_path: str, message: str) -> None:
        self.count += 1
        self.problems.append(Problem(self.file, f"{self.path}.{field_path}", message))


def _parse_version(
    raw: dict[str, Any],
    file: str,
    path: str,
    templates: Mapping[str, TemplateDef],
    problems: list[Problem],
) -> ProcedureVersion | None:
    problem = _Collector(file, path, problems)
    template_name = raw.get("template")
    if template_name is not None:
        template = templates.get(str(template_name))
        if template is None:
            problem(
                "template",
                f"unknown template {template_name!r} "
                f"(known: {', '.join(sorted(templates)) or 'none'})",
            )
            return None
        params = dict(template.defaults) | dict(raw.get("params") or {})
        missing = [p for p in template.parameters if p not in params]
        if missing:
            problem("params", f"template {template_name!r} needs parameters: {', '.join(missing)}")
            return None
        unknown = [p for p in (raw.get("params") or {}) if p not in template.parameters]
        if unknown:
            problem("params", f"template {template_name!r} has no parameters: {', '.join(unknown)}")
        expanded = _substitute(template.body, {k: str(v) for k, v in params.items()})
        raw = expanded | {k: v for k, v in raw.items() if k not in {"template", "params"}}

    name = raw.get("name")
    if not isinstance(name, str) or not name:
        problem("name", "missing procedure name")
    version_number = raw.get("version", 1)
    if not isinstance(version_number, int) or version_number < 1:
        problem("version", f"must be a positive integer, got {version_number!r}")
        version_number = 1
    effective_from = _date(raw.get("effective_from"), "effective_from", problem, required=True)
    effective_to = _date(raw.get("effective_to"), "effective_to", problem, required=False)
    if effective_from and effective_to and effective_to < effective_from:
        problem("effective_to", f"{effective_to} is before effective_from {effective_from}")

    levels = tuple(str(level) for level in raw.get("levels") or ())
    if not levels:
        problem("levels", "at least one level is required")
    receiving = str(raw.get("receiving_level") or (levels[0] if levels else ""))
    returning = str(raw.get("returning_level") or receiving)
    for key, value in (("receiving_level", receiving), ("returning_level", returning)):
        if levels and value not in levels:
            problem(key, f"level {value!r} is not one of the procedure's levels {list(levels)}")

    states = _parse_states(raw.get("states"), levels, problem)
    initial = str(raw.get("initial") or "")
    if initial not in states:
        problem("initial", f"unknown initial state {initial!r}")
    before = problem.count
    transitions = _parse_transitions(raw.get("transitions"), states, levels, problem)
    if problem.count == before:  # a graph of broken transitions would only repeat the error
        _check_graph(initial, states, transitions, problem)
    deadline = _parse_deadline(raw.get("deadline"), levels, problem)
    fees = _parse_fees(raw.get("fees"), problem)
    discounts = _parse_discounts(raw.get("discounts"), fees, problem)

    if problem.count or effective_from is None or deadline is None:
        return None
    return ProcedureVersion(
        code=str(raw["code"]),
        name=str(name),
        version=version_number,
        effective_from=effective_from,
        effective_to=effective_to,
        levels=levels,
        receiving_level=receiving,
        returning_level=returning,
        initial=initial,
        states=states,
        transitions=transitions,
        deadline=deadline,
        fees=fees,
        discounts=discounts,
        template=str(template_name) if template_name is not None else None,
        group=str(raw.get("group") or template_name or "custom"),
        source_file=file,
    )


def _substitute(value: Any, params: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        # Most strings of a template's body name no parameter; parsing them is most of the
        # catalogue's load time. Without a "$", substitute() returns the string unchanged.
        return Template(value).substitute(params) if "$" in value else value
    if isinstance(value, list):
        return [_substitute(v, params) for v in value]
    if isinstance(value, dict):
        return {_substitute(k, params): _substitute(v, params) for k, v in value.items()}
    return value


def _date(value: Any, key: str, problem: _Collector, *, required: bool) -> date | None:
    if value is None:
        if required:
            problem(key, "a date is required")
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        problem(key, f"not a date (YYYY-MM-DD): {value!r}")
        return None


def _parse_states(raw: Any, levels: tuple[str, ...], problem: _Collector) -> dict[str, StateDef]:
    states: dict[str, StateDef] = {}
    if not isinstance(raw, dict) or not raw:
        problem("states", "a mapping of states is required")
        return states
    for name, spec in raw.items():
        spec = spec or {}
        where = f"states.{name}"
        status = spec.get("status")
        if status is None:
            problem(where, "state has no status code (national status 1-10)")
            continue
        if not isinstance(status, int) or status not in STATUS_LABELS:
            problem(f"{where}.status", f"status code must be 1-10, got {status!r}")
            continue
        level = spec.get("level")
        if level is not None and str(level) not in levels:
            problem(f"{where}.level", f"unknown level {level!r} (levels: {list(levels)})")
        states[str(name)] = StateDef(
            name=str(name),
            status_code=status,
            level=None if level is None else str(level),
            final=bool(spec.get("final", False)),
        )
    return states


def _parse_transitions(
    raw: Any, states: Mapping[str, StateDef], levels: tuple[str, ...], problem: _Collector
) -> tuple[TransitionDef, ...]:
    if not isinstance(raw, list) or not raw:
        problem("transitions", "a list of transitions is required")
        return ()
    parsed: list[TransitionDef] = []
    for i, spec in enumerate(raw):
        where = f"transitions[{i}]"
        if not isinstance(spec, dict):
            problem(where, "expected a mapping")
            continue
        event = spec.get("event")
        if event not in INBOUND_TYPES or event == "submitted":
            problem(
                f"{where}.event", f"unknown inbound type {event!r} (submitted creates the dossier)"
            )
            continue
        sources_raw = spec.get("from")
        sources = tuple(sources_raw if isinstance(sources_raw, list) else [sources_raw])
        for source in sources:
            if source not in states:
                problem(f"{where}.from", f"unknown state {source!r}")
        dest = spec.get("to")
        if dest is not None and dest not in states:
            problem(f"{where}.to", f"unknown state {dest!r}")
        level = spec.get("level")
        if event in SUBMISSION_TYPES:
            if level is not None:
                problem(f"{where}.level", f"{event!r} comes from the submission topic, not a level")
        elif level is None:
            problem(f"{where}.level", f"{event!r} comes from a level's topic: name the level")
        elif level not in levels:
            problem(f"{where}.level", f"unknown level {level!r} (levels: {list(levels)})")
        guards = tuple(spec.get("guards") or ())
        for guard in guards:
            if guard not in KNOWN_GUARDS:
                problem(
                    f"{where}.guards", f"unknown guard {guard!r} (known: {sorted(KNOWN_GUARDS)})"
                )
        when = {str(k): str(v) for k, v in (spec.get("when") or {}).items()}
        parsed.append(
            TransitionDef(str(event), tuple(str(s) for s in sources), dest, level, guards, when)
        )
    return tuple(parsed)


def _check_graph(
    initial: str,
    states: Mapping[str, StateDef],
    transitions: Sequence[TransitionDef],
    problem: _Collector,
) -> None:
    exits: dict[str, set[str]] = {name: set() for name in states}
    for t in transitions:
        for source in t.sources:
            if source in exits:
                exits[source].add(t.dest or source)
    for name, state in states.items():
        leaving = exits[name] - {name}
        if state.final and leaving:
            problem(f"states.{name}", f"final state has exits to {sorted(leaving)}")
        if not state.final and not leaving:
            problem(f"states.{name}", "non-final state has no exit")
    if initial not in states:
        return
    seen, frontier = {initial}, [initial]
    while frontier:
        for nxt in exits[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    for name in states:
        if name not in seen:
            problem(f"states.{name}", f"unreachable from the initial state {initial!r}")


def _decimal(value: Any, key: str, problem: _Collector) -> Decimal | None:
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError):
        problem(key, f"not a number: {value!r}")
        return None
    if not result.is_finite() or result <= 0:
        problem(key, f"must be positive, got {value!r}")
        return None
    return result


def _parse_deadline(
    raw: Any, levels: tuple[str, ...], problem: _Collector
) -> DeadlinePolicy | None:
    if not isinstance(raw, dict):
        problem("deadline", "a deadline policy (working_days, supplementation) is required")
        return None
    days = _decimal(raw.get("working_days"), "deadline.working_days", problem)
    policy = raw.get("supplementation", "restart")
    if policy not in ("restart", "shift"):
        problem("deadline.supplementation", f"must be 'restart' or 'shift', got {policy!r}")
        return None
    per_level: dict[str, Decimal] = {}
    for level, level_days in (raw.get("per_level") or {}).items():
        if level not in levels:
            problem(f"deadline.per_level.{level}", f"unknown level (levels: {list(levels)})")
            continue
        parsed = _decimal(level_days, f"deadline.per_level.{level}", problem)
        if parsed is not None:
            per_level[level] = parsed
    if days is None:
        return None
    if per_level and sum(per_level.values()) != days:
        problem(
            "deadline.per_level", f"per-level days add up to {sum(per_level.values())}, not {days}"
        )
    return DeadlinePolicy(days, policy, per_level)


def _parse_fees(raw: Any, problem: _Collector) -> dict[str, Fee]:
    fees: dict[str, Fee] = {}
    for i, spec in enumerate(raw or []):
        code, amount = spec.get("code"), spec.get("amount")
        if not isinstance(code, str) or not code:
            problem(f"fees[{i}].code", "missing fee code")
            continue
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            problem(
                f"fees[{i}].amount", f"must be whole VND (a non-negative integer), got {amount!r}"
            )
            continue
        variable = spec.get("variable", False)
        if not isinstance(variable, bool):
            problem(f"fees[{i}].variable", f"must be true or false, got {variable!r}")
            continue
        if code in fees:
            problem(f"fees[{i}].code", f"duplicate fee code {code!r}")
        fees[code] = Fee(code, amount, str(spec.get("name", "")), variable)
    return fees


def _parse_discounts(
    raw: Any, fees: Mapping[str, Fee], problem: _Collector
) -> tuple[DiscountRule, ...]:
    rules: list[DiscountRule] = []
    for i, spec in enumerate(raw or []):
        where = f"discounts[{i}]"
        fee_code = spec.get("fee")
        if fee_code not in fees:
            problem(f"{where}.fee", f"discount on unknown fee {fee_code!r} (fees: {sorted(fees)})")
            continue
        has_percent, has_amount = "percent" in spec, "amount" in spec
        if has_percent == has_amount:
            problem(where, "give exactly one of 'percent' or 'amount'")
            continue
        percent = amount = None
        if has_percent:
            percent = _decimal(spec["percent"], f"{where}.percent", problem)
            if percent is not None and percent > 100:
                problem(f"{where}.percent", f"must be at most 100, got {percent}")
        else:
            amount = spec["amount"]
            if not isinstance(amount, int) or amount <= 0:
                problem(f"{where}.amount", f"must be a positive whole VND amount, got {amount!r}")
        valid_from = _date(spec.get("valid_from"), f"{where}.valid_from", problem, required=False)
        valid_to = _date(spec.get("valid_to"), f"{where}.valid_to", problem, required=False)
        if valid_from and valid_to and valid_to < valid_from:
            problem(f"{where}.valid_to", f"{valid_to} is before valid_from {valid_from}")
        basis = spec.get("legal_basis")
        if not isinstance(basis, str) or not basis:
            problem(f"{where}.legal_basis", "every discount cites its legal basis")
        channels = spec.get("channels", [2])
        if not channels or any(c not in (1, 2, 3) for c in channels):
            problem(f"{where}.channels", f"channels are 1, 2 or 3, got {channels!r}")
        rules.append(
            DiscountRule(
                id=str(spec.get("id") or f"{fee_code}-{i}"),
                fee_code=str(fee_code),
                percent=percent,
                amount=amount,
                channels=frozenset(channels),
                full_online=bool(spec.get("full_online", False)),
                valid_from=valid_from,
                valid_to=valid_to,
                legal_basis=str(basis),
            )
        )
    return tuple(rules)


def _check_overlaps(versions: Sequence[ProcedureVersion], problems: list[Problem]) -> None:
    by_code: dict[str, list[ProcedureVersion]] = {}
    for version in versions:
        by_code.setdefault(version.code, []).append(version)
    for code, group in by_code.items():
        group.sort(key=lambda v: v.effective_from)
        numbers = [v.version for v in group]
        if len(set(numbers)) != len(numbers):
            problems.append(
                Problem(group[0].source_file, code, f"duplicate version numbers {numbers}")
            )
        for earlier, later in itertools.pairwise(group):
            if earlier.effective_to is None or earlier.effective_to >= later.effective_from:
                problems.append(
                    Problem(
                        later.source_file,
                        code,
                        f"version {later.version} (from {later.effective_from}) overlaps version "
                        f"{earlier.version} ({earlier.effective_from} to "
                        f"{earlier.effective_to or 'open end'})",
                    )
                )
