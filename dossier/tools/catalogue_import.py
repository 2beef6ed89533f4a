"""A province's procedure list (CSV) into procedure definitions: one YAML file for all of them.

A province publishes its procedures as a table (code, name, level, time limit, fees, online
level); the engine runs versions instantiated from workflow templates. Each CSV row is one
*version* of a procedure, so a procedure whose level changed on 1 July 2025 is two rows with the
same code and consecutive validity windows.

Columns (a header row names them, in any order; extra columns are ignored with a warning):

- `code` (required): procedure code (mã TTHC), e.g. `1.001193`.
- `name` (required): procedure name.
- `levels` (required): `commune`, `district` or `province`, or `receiving>upper` for
  inter-level handling (liên thông), e.g. `commune>province`.
- `working_days` (required): total processing time in working days (`0.5`, `15`).
- `effective_from` (required), `effective_to`: first and last (inclusive) submission date of
  this version, `YYYY-MM-DD` or `DD/MM/YYYY`; an empty `effective_to` is open-ended.
- `template`: workflow template; default `single-level` for one level, `inter-level` for two.
  The levels bind, in order, to the template's parameters.
- `per_level_days`: split of the time per level, `commune:5;district:25`.
- `supplementation`: `restart` (Decree 61/2018 art. 19.4, the default) or `shift`.
- `fees`: `CODE:AMOUNT[:name];...`, whole VND, e.g. `LP-CT:20000:Lệ phí đăng ký cư trú`.
- `online_level`: online service level 1-4 (4: full online, "toàn trình"), or `partial` (3)
  or `full` (4).
- `discount_percent`: reduction of every fee of the row for online submissions, e.g. `50`;
  `discount_condition`: `online` (submitted online, the default) or `full-online` (the full
  online service); `discount_from`, `discount_to`: submission dates it is valid for;
  `legal_basis` (required with a discount): cited in every discount event.

Codes already defined in another file of the catalogue (the contract's reference procedures in
`reference.yaml`) are skipped, so the hand-written definition stays the one in force; a row
that disagrees with it is reported as a warning.

A procedure whose version ends the day before its next version starts, from the same template,
also gets a migration plan (`engine.procedures.MigrationPlan`) in a second file,
`migrations/<csv name>.yaml` beside the procedures directory: its open dossiers continue under
the next version from that version's first day, each open state in the same-named state, the
levels whose template parameter changed renamed (`district: commune`). Nothing is guessed: a
change of template gets no plan, and a state without a same-named open counterpart at the
mapped level is left out of its plan (its dossiers are refused and stay on their version); a
comment in the file says which.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from engine.events import LEVEL_TOPICS
from engine.procedures import (
    Catalogue,
    ProcedureVersion,
    StateDef,
    WorkflowError,
    load_catalogue,
)

REQUIRED_COLUMNS = ("code", "name", "levels", "working_days", "effective_from")
OPTIONAL_COLUMNS = (
    "effective_to",
    "template",
    "per_level_days",
    "supplementation",
    "fees",
    "online_level",
    "discount_percent",
    "discount_condition",
    "discount_from",
    "discount_to",
    "legal_basis",
)
# The template a row gets when it names none, by its number of levels.
DEFAULT_TEMPLATES: Mapping[int, str] = {1: "single-level", 2: "inter-level"}
ONLINE_LEVEL_WORDS: Mapping[str, int] = {"partial": 3, "full": 4}
DISCOUNT_CONDITIONS = ("online", "full-online")
_FEE_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PROBLEM_PATH = re.compile(r"^procedures\[(\d+)\](?:\.versions\[(\d+)\])?")
_PLAN_PATH = re.compile(r"^plans\[(\d+)\]")
# Nothing in the project's sources names the decision behind the 2025 moves: the generated plans
# say so rather than cite one.
DISTRICT_ABOLITION_BASIS = (
    "illustrative: the district level of local government is abolished from 2025-07-01 (the "
    "2025 reorganisation into two tiers); a dossier open under the version that involved the "
    "district continues under the version in force from that day, its district steps taken by "
    "the level that replaces the district"
)
DISTRICT_ABOLITION_DAY = date(2025, 7, 1)


def known_levels() -> tuple[str, ...]:
    """Levels a procedure may use: those with an inbound topic in the contract."""
    return tuple(LEVEL_TOPICS.values())


@dataclass(frozen=True, slots=True)
class ImportProblem:
    file: str
    line: int  # 1-based line of the CSV file; 0 when the problem is not tied to one line
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.message}"
            if self.line
            else f"{self.file}: {self.message}"
        )


class CatalogueImportError(Exception):
    """The CSV cannot be imported; `problems` names the line of each."""

    def __init__(self, problems: Sequence[ImportProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class FeeSpec:
    code: str
    amount: int
    name: str


@dataclass(frozen=True, slots=True)
class DiscountSpec:
    percent: Decimal
    condition: str  # "online" or "full-online"
    valid_from: date | None
    valid_to: date | None
    legal_basis: str


@dataclass(frozen=True, slots=True)
class RowVersion:
    """One CSV row: one version of one procedure."""

    line: int
    code: str
    name: str
    levels: tuple[str, ...]
    template: str
    params: Mapping[str, str]
    working_days: Decimal
    per_level: Mapping[str, Decimal]
    supplementation: str
    effective_from: date
    effective_to: date | None
    fees: tuple[FeeSpec, ...]
    online_level: int | None
    discount: DiscountSpec | None

    @property
    def competent_level(self) -> str:
        """The level that decides: the upper one for inter-level handling."""
        return self.levels[-1]


@dataclass(frozen=True, slots=True)
class ImportedProcedure:
    code: str
    versions: tuple[RowVersion, ...]  # by effective date; version numbers follow this order


@dataclass(frozen=True, slots=True)
class PlanDraft:
    """A migration plan the importer writes: one procedure's version to its next."""

    code: str
    line: int  # CSV line of the version the plan moves dossiers to
    from_version: int
    to_version: int
    effective: date
    template: str
    states: tuple[tuple[str, str], ...]  # in the order version `from_version` declares them
    levels: Mapping[str, str]
    left_out: tuple[str, ...]  # open states with no counterpart: their dossiers are refused
    basis: str


@dataclass(frozen=True, slots=True)
class NoPlan:
    """Consecutive versions the importer writes no plan for, and why (a comment in the file)."""

    code: str
    from_version: int
    to_version: int
    reason: str


@dataclass
class ImportResult:
    procedures: list[ImportedProcedure]
    skipped: dict[str, str]  # code -> file that already defines it
    warnings: list[ImportProblem]
    yaml_text: str
    output: Path | None = None
    plans: list[PlanDraft] = field(default_factory=list)
    no_plans: list[NoPlan] = field(default_factory=list)
    plans_text: str = ""
    plans_output: Path | None = None

    @property
    def version_count(self) -> int:
        return sum(len(p.versions) for p in self.procedures)


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    name: str
    parameters: tuple[str, ...]


def read_templates(directory: Path) -> dict[str, TemplateInfo]:
    """Template names and their parameters, in declaration order (the levels bind in order)."""
    templates: dict[str, TemplateInfo] = {}
    for path in sorted(directory.glob("*.yaml")):
        with path.open(encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
        if not isinstance(document, dict) or "template" not in document:
            continue  # load_catalogue reports it; the importer only needs the good ones
        raw = document.get("parameters") or {}
        names = tuple(str(p) for p in (raw if isinstance(raw, list) else raw.keys()))
        templates[str(document["template"])] = TemplateInfo(str(document["template"]), names)
    return templates


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


class _RowChecker:
    """Parses one row's cells, collecting every problem of the row rather than the first."""

    def __init__(self, file: str, line: int, cells: Mapping[str, str]) -> None:
        self.file, self.line, self.cells = file, line, cells
        self.problems: list[ImportProblem] = []

    def cell(self, column: str) -> str:
        return (self.cells.get(column) or "").strip()

    def fail(self, column: str, message: str) -> None:
        value = self.cell(column)
        shown = f" {value!r}" if value else ""
        self.problems.append(ImportProblem(self.file, self.line, f"{column}{shown}: {message}"))

    def date(self, column: str, *, required: bool) -> date | None:
        text = self.cell(column)
        if not text:
            if required:
                self.fail(column, "a date is required")
            return None
        for pattern in ("%Y-%m-%d", "%d/%m/%Y"):
            try:
                return datetime.strptime(text, pattern).date()
            except ValueError:
                continue
        self.fail(column, "not a date (YYYY-MM-DD or DD/MM/YYYY)")
        return None

    def positive_decimal(self, column: str, text: str | None = None) -> Decimal | None:
        raw = self.cell(column) if text is None else text
        if "," in raw:
            self.fail(column, "use a dot for decimals (0.5), not a comma")
            return None
        try:
            value = Decimal(raw)
        except InvalidOperation:
            self.fail(column, "not a number")
            return None
        if not value.is_finite() or value <= 0:
            self.fail(column, "must be a positive number")
            return None
        return value


def parse_row(
    file: str,
    line: int,
    cells: Mapping[str, str],
    templates: Mapping[str, TemplateInfo],
    levels_known: Sequence[str],
) -> tuple[RowVersion | None, list[ImportProblem]]:
    row = _RowChecker(file, line, cells)
    code, name = row.cell("code"), row.cell("name")
    if not code:
        row.fail("code", "a procedure code is required")
    if not name:
        row.fail("name", "a procedure name is required")

    levels = (
        tuple(part.strip() for part in row.cell("levels").split(">")) if row.cell("levels") else ()
    )
    if not levels:
        row.fail("levels", f"required: one of {', '.join(levels_known)} or receiving>upper")
    unknown = [lvl for lvl in levels if lvl not in levels_known]
    if unknown:
        row.fail(
            "levels",
            f"unknown level {', '.join(repr(u) for u in unknown)} (levels with an inbound "
            f"topic: {', '.join(levels_known)}; inter-level handling is written receiving>upper)",
        )
    elif len(set(levels)) != len(levels):
        row.fail("levels", "a level appears twice")

    template_name = row.cell("template") or DEFAULT_TEMPLATES.get(len(levels), "")
    params: dict[str, str] = {}
    template = templates.get(template_name)
    if levels and not unknown:
        if not template_name:
            row.fail("levels", f"no default template for {len(levels)} levels: name a template")
        elif template is None:
            row.fail(
                "template",
                f"unknown template {template_name!r} (known: {', '.join(sorted(templates))})",
            )
        elif len(template.parameters) != len(levels):
            row.fail(
                "levels",
                f"template {template_name!r} takes {len(template.parameters)} level(s) "
                f"({', '.join(template.parameters)}), the row gives {len(levels)}",
            )
        else:
            params = dict(zip(template.parameters, levels, strict=True))

    days = row.positive_decimal("working_days")
    per_level: dict[str, Decimal] = {}
    for part in filter(None, (p.strip() for p in row.cell("per_level_days").split(";"))):
        level, sep, amount = part.partition(":")
        if not sep or level.strip() not in levels:
            row.fail("per_level_days", f"{part!r} is not LEVEL:DAYS with a level of the row")
            continue
        parsed = row.positive_decimal("per_level_days", amount.strip())
        if parsed is not None:
            per_level[level.strip()] = parsed
    if per_level and days is not None and sum(per_level.values()) != days:
        row.fail("per_level_days", f"add up to {sum(per_level.values())}, not working_days {days}")

    supplementation = row.cell("supplementation") or "restart"
    if supplementation not in ("restart", "shift"):
        row.fail("supplementation", "must be 'restart' or 'shift'")

    effective_from = row.date("effective_from", required=True)
    effective_to = row.date("effective_to", required=False)
    if effective_from and effective_to and effective_to < effective_from:
        row.fail("effective_to", f"is before effective_from {effective_from}")

    fees = _parse_fees(row)
    online_level = _parse_online_level(row)
    discount = _parse_discount(row, fees, online_level)

    if row.problems or days is None or effective_from is None:
        return None, row.problems
    return (
        RowVersion(
            line=line,
            code=code,
            name=name,
            levels=levels,
            template=template_name,
            params=params,
            working_days=days,
            per_level=per_level,
            supplementation=supplementation,
            effective_from=effective_from,
            effective_to=effective_to,
            fees=fees,
            online_level=online_level,
            discount=discount,
        ),
        [],
    )


def _parse_fees(row: _RowChecker) -> tuple[FeeSpec, ...]:
    fees: list[FeeSpec] = []
    for part in filter(None, (p.strip() for p in row.cell("fees").split(";"))):
        pieces = part.split(":", 2)
        if len(pieces) < 2:
            row.fail("fees", f"{part!r} is not CODE:AMOUNT[:name]")
            continue
        code, amount_text = pieces[0].strip(), pieces[1].strip()
        if not _FEE_CODE.match(code):
            row.fail("fees", f"fee code {code!r} must be letters, digits, '.', '_' or '-'")
            continue
        if not amount_text.isdigit():
            row.fail("fees", f"amount {amount_text!r} of {code} must be whole VND digits (20000)")
            continue
        if any(f.code == code for f in fees):
            row.fail("fees", f"fee code {code} appears twice")
            continue
        fees.append(FeeSpec(code, int(amount_text), pieces[2].strip() if len(pieces) > 2 else ""))
    return tuple(fees)


def _parse_online_level(row: _RowChecker) -> int | None:
    text = row.cell("online_level").lower()
    if not text:
        return None
    if text in ONLINE_LEVEL_WORDS:
        return ONLINE_LEVEL_WORDS[text]
    if text.isdigit() and 1 <= int(text) <= 4:
        return int(text)
    row.fail("online_level", "must be 1-4, 'partial' or 'full'")
    return None


def _parse_discount(
    row: _RowChecker, fees: Sequence[FeeSpec], online_level: int | None
) -> DiscountSpec | None:
    columns = ("discount_condition", "discount_from", "discount_to", "legal_basis")
    if not row.cell("discount_percent"):
        stray = [c for c in columns if row.cell(c)]
        if stray:
            row.fail(stray[0], "given without discount_percent")
        return None
    percent = row.positive_decimal("discount_percent")
    if percent is not None and percent > 100:
        row.fail("discount_percent", "must be at most 100")
    if not fees:
        row.fail("discount_percent", "a discount needs fees to reduce (the fees column is empty)")
    condition = row.cell("discount_condition") or "online"
    if condition not in DISCOUNT_CONDITIONS:
        row.fail("discount_condition", f"must be one of {', '.join(DISCOUNT_CONDITIONS)}")
    needed = 4 if condition == "full-online" else 3
    if online_level is not None and online_level < needed:
        row.fail(
            "discount_condition",
            f"{condition} submissions need online level {needed}, the row has {online_level}",
        )
    valid_from = row.date("discount_from", required=False)
    valid_to = row.date("discount_to", required=False)
    if valid_from and valid_to and valid_to < valid_from:
        row.fail("discount_to", f"is before discount_from {valid_from}")
    basis = row.cell("legal_basis")
    if not basis:
        row.fail("legal_basis", "every discount cites its legal basis")
    if percent is None or percent > 100:
        return None
    return DiscountSpec(percent, condition, valid_from, valid_to, basis)


def read_rows(
    path: Path, templates: Mapping[str, TemplateInfo], levels_known: Sequence[str]
) -> list[RowVersion]:
    """Every row of the CSV, or CatalogueImportError naming each bad line."""
    file = path.name
    problems: list[ImportProblem] = []
    rows: list[RowVersion] = []
    try:
        # utf-8-sig: spreadsheet programs save CSV with a byte-order mark.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogueImportError([ImportProblem(file, 0, f"cannot read: {exc}")]) from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or ()]
    reader.fieldnames = header
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CatalogueImportError(
            [ImportProblem(file, 1, f"missing column(s): {', '.join(missing)}")]
        )
    for cells in reader:
        line = reader.line_num
        if None in cells:  # DictReader files surplus cells under the key None
            problems.append(ImportProblem(file, line, f"more cells than the {len(header)} columns"))
            continue
        if (cells.get("code") or "").lstrip().startswith("#"):
            continue
        if not any((v or "").strip() for v in cells.values()):
            continue
        parsed, row_problems = parse_row(file, line, cells, templates, levels_known)
        problems.extend(row_problems)
        if parsed is not None:
            rows.append(parsed)
    if problems:
        raise CatalogueImportError(problems)
    return rows


def unknown_columns(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), [])
    return [
        h
        for h in (c.strip() for c in header)
        if h and h not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    ]


def group_versions(file: str, rows: Iterable[RowVersion]) -> list[ImportedProcedure]:
    """Rows by code, versions ordered by date; overlapping windows name both lines."""
    by_code: dict[str, list[RowVersion]] = {}
    for row in rows:
        by_code.setdefault(row.code, []).append(row)
    problems: list[ImportProblem] = []
    procedures: list[ImportedProcedure] = []
    for code, versions in by_code.items():
        versions.sort(key=lambda v: (v.effective_from, v.line))
        for earlier, later in itertools.pairwise(versions):
            if earlier.effective_to is None or earlier.effective_to >= later.effective_from:
                until = earlier.effective_to or "open end"
                problems.append(
                    ImportProblem(
                        file,
                        later.line,
                        f"{code} from {later.effective_from} overlaps line {earlier.line} "
                        f"({earlier.effective_from} to {until}); end that version first "
                        "(effective_to)",
                    )
                )
        procedures.append(ImportedProcedure(code, tuple(versions)))
    if problems:
        raise CatalogueImportError(problems)
    return procedures


# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------


def _q(value: str) -> str:
    """A YAML scalar that stays a string: JSON's double-quoted strings are valid YAML."""
    return json.dumps(value, ensure_ascii=False)


def _num(value: Decimal) -> str:
    return format(value.normalize(), "f")


class _Anchors:
    """Repeated long strings (legal bases) written once and referred to by alias."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        name = self.names.get(text)
        if name is not None:
            return f"*{name}"
        name = self.names[text] = f"basis{len(self.names) + 1}"
        return f"&{name} {_q(text)}"


def render_yaml(procedures: Sequence[ImportedProcedure], source: str) -> str:
    anchors = _Anchors()
    versions = sum(len(p.versions) for p in procedures)
    out = [
        f"# Generated by `dossier workflows import {source}`: edit the CSV and import again.",
        f"# {len(procedures)} procedures, {versions} versions; each version is one CSV line.",
        "procedures:" if procedures else "procedures: []",
    ]
    for procedure in procedures:
        latest = procedure.versions[-1]
        lines = ", ".join(str(v.line) for v in procedure.versions)
        out += [
            f"  - code: {_q(procedure.code)}",
            f"    name: {_q(latest.name)}",
            f"    versions:  # {source} line{'s' if len(procedure.versions) > 1 else ''} {lines}",
        ]
        for number, version in enumerate(procedure.versions, start=1):
            out += _render_version(number, version, latest.name, anchors)
    return "\n".join(out) + "\n"


def _render_version(number: int, v: RowVersion, name: str, anchors: _Anchors) -> list[str]:
    window = [f"        effective_from: {v.effective_from.isoformat()}"]
    if v.effective_to is not None:
        window.append(f"        effective_to: {v.effective_to.isoformat()}")
    params = ", ".join(f"{k}: {val}" for k, val in v.params.items())
    deadline = f"working_days: {_num(v.working_days)}, supplementation: {v.supplementation}"
    if v.per_level:
        split = ", ".join(f"{k}: {_num(d)}" for k, d in v.per_level.items())
        deadline += f", per_level: {{{split}}}"
    online = f"  # online level {v.online_level}" if v.online_level is not None else ""
    lines = [f"      - version: {number}{online}"]
    if v.name != name:
        lines.append(f"        name: {_q(v.name)}")
    lines += [
        *window,
        f"        template: {v.template}",
        f"        params: {{{params}}}",
        f"        deadline: {{{deadline}}}",
    ]
    if v.fees:
        lines.append("        fees:")
        for fee in v.fees:
            named = f", name: {_q(fee.name)}" if fee.name else ""
            lines.append(f"          - {{code: {_q(fee.code)}, amount: {fee.amount}{named}}}")
    if v.discount is not None:
        d = v.discount
        lines.append("        discounts:")
        for fee in v.fees:
            parts = [
                f"id: {_q(f'{fee.code}-{d.condition}-{_num(d.percent)}')}",
                f"fee: {_q(fee.code)}",
                f"percent: {_num(d.percent)}",
                "channels: [2]",
            ]
            if d.condition == "full-online":
                parts.append("full_online: true")
            if d.valid_from is not None:
                parts.append(f"valid_from: {d.valid_from.isoformat()}")
            if d.valid_to is not None:
                parts.append(f"valid_to: {d.valid_to.isoformat()}")
            parts.append(f"legal_basis: {anchors(d.legal_basis)}")
            lines.append(f"          - {{{', '.join(parts)}}}")
    return lines


# --------------------------------------------------------------------------------------------
# Migration plans
# --------------------------------------------------------------------------------------------


def plan_migrations(
    procedures: Sequence[ImportedProcedure], catalogue: Catalogue
) -> tuple[list[PlanDraft], list[NoPlan]]:
    """A plan per version that ends the day before the next starts, with the same template.

    `catalogue` holds the procedures as the engine loads them: their states' levels and
    finality are the template's, resolved, so the plan is checked against what will run."""
    drafts: list[PlanDraft] = []
    no_plans: list[NoPlan] = []
    for procedure in procedures:
        for number, (earlier, later) in enumerate(itertools.pairwise(procedure.versions), start=1):
            if earlier.effective_to != later.effective_from - timedelta(days=1):
                continue  # a gap: no dossier of the earlier version can wait for the later
            if earlier.template != later.template:
                # Same-named states of two templates need not mean the same step: a mapping
                # between them is someone's decision, not a name match.
                no_plans.append(
                    NoPlan(
                        procedure.code,
                        number,
                        number + 1,
                        f"template {earlier.template} -> {later.template}: states are not "
                        f"mapped by name across templates; its open dossiers stay on "
                        f"version {number}",
                    )
                )
                continue
            source = catalogue.get(procedure.code, number)
            target = catalogue.get(procedure.code, number + 1)
            if source is None or target is None:  # pragma: no cover - the catalogue loaded them
                continue
            levels = {
                old: later.params[param]
                for param, old in earlier.params.items()
                if later.params.get(param, old) != old
            }
            states: list[tuple[str, str]] = []
            left_out: list[str] = []
            for state in source.states.values():
                if state.final:
                    continue
                if _counterpart(state, target.states.get(state.name), levels):
                    states.append((state.name, state.name))
                else:
                    left_out.append(state.name)
            if not states:
                no_plans.append(
                    NoPlan(
                        procedure.code,
                        number,
                        number + 1,
                        f"no open state of version {number} has a same-named counterpart "
                        f"in version {number + 1}: {', '.join(left_out)}",
                    )
                )
                continue
            drafts.append(
                PlanDraft(
                    code=procedure.code,
                    line=later.line,
                    from_version=number,
                    to_version=number + 1,
                    effective=later.effective_from,
                    template=earlier.template,
                    states=tuple(states),
                    levels=levels,
                    left_out=tuple(left_out),
                    basis=_plan_basis(levels, later.effective_from, number),
                )
            )
    return drafts, no_plans


def _counterpart(state: StateDef, other: StateDef | None, levels: Mapping[str, str]) -> bool:
    """The same-named state is the same step: open, at the level the plan maps this one to."""
    if other is None or other.final:
        return False
    if state.level is None or other.level is None:
        return state.level == other.level
    return levels.get(state.level, state.level) == other.level


def _plan_basis(levels: Mapping[str, str], effective: date, number: int) -> str:
    if "district" in levels and effective == DISTRICT_ABOLITION_DAY:
        return DISTRICT_ABOLITION_BASIS
    return (
        f"illustrative: version {number} ends the day before version {number + 1} starts, "
        "from the same template; the procedure list names no decision for the move"
    )


def render_plans_yaml(drafts: Sequence[PlanDraft], no_plans: Sequence[NoPlan], source: str) -> str:
    bases = _Anchors()
    state_maps: dict[tuple[tuple[str, str], ...], str] = {}
    refused = sum(1 for d in drafts if d.left_out)
    guessed = (
        f"{refused} plan(s) leave states out and {len(no_plans)} version change(s) get no plan"
        if refused or no_plans
        else "none here"
    )
    out = [
        f"# Generated by `dossier workflows import {source}`: edit the CSV and import again.",
        f"# {len(drafts)} migration plans: a version that ends the day before the next one "
        "starts, from the same",
        "# template, moves its open dossiers to the next from that one's first day (00:00",
        "# Asia/Ho_Chi_Minh, by the business clock), each open state to the same-named one.",
        "# Nothing is guessed: a change of template gets no plan, and a state with no same-named",
        "# open counterpart is left out of its plan (its dossiers are refused: they stay whole on",
        f"# their version); comments name each ({guessed}).",
        *(
            f"# {n.code} v{n.from_version} -> v{n.to_version}: no plan, {n.reason}"
            for n in no_plans
        ),
        "plans:" if drafts else "plans: []",
    ]
    for draft in drafts:
        out += [
            f"  - procedure: {_q(draft.code)}  # {source} line {draft.line}",
            f"    from_version: {draft.from_version}",
            f"    to_version: {draft.to_version}",
            f"    effective: {draft.effective.isoformat()}",
            f"    basis: {bases(draft.basis)}",
        ]
        if draft.left_out:
            out.append(
                f"    # left out, no same-named open state at the mapped level in version "
                f"{draft.to_version} (refused, they stay on version {draft.from_version}): "
                f"{', '.join(draft.left_out)}"
            )
        anchor = state_maps.get(draft.states)
        if anchor is not None:
            out.append(f"    states: *{anchor}")
        else:
            anchor = _state_map_anchor(draft.template, state_maps.values())
            state_maps[draft.states] = anchor
            out.append(f"    states: &{anchor}")
            out += [f"      {old}: {new}" for old, new in draft.states]
        levels = ", ".join(f"{old}: {new}" for old, new in draft.levels.items())
        out.append(f"    levels: {{{levels}}}")
    return "\n".join(out) + "\n"


def _state_map_anchor(template: str, taken: Iterable[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "_", template).strip("_") + "_states"
    used = set(taken)
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}_{n}"
    return name


# --------------------------------------------------------------------------------------------
# The whole import
# --------------------------------------------------------------------------------------------


def import_catalogue(csv_path: Path, root: Path, out_dir: Path | None = None) -> ImportResult:
    """Read the CSV, skip codes defined elsewhere, validate against the catalogue, write YAML.

    `root` holds `templates/` and the catalogue's procedure files (`procedures/`) and migration
    plans (`migrations/`); the output is `<out_dir>/<csv stem>.yaml` (default out_dir:
    `<root>/procedures`) and the plans `<out_dir>/../migrations/<csv stem>.yaml`. Codes that
    `<root>/procedures` defines in another file are skipped. Nothing is written unless the
    catalogue with the new files loads cleanly.
    """
    out_dir = out_dir or root / "procedures"
    output = out_dir / f"{csv_path.stem}.yaml"
    plans_output = out_dir.parent / "migrations" / f"{csv_path.stem}.yaml"
    file = csv_path.name
    templates = read_templates(root / "templates")
    if not templates:
        raise CatalogueImportError(
            [ImportProblem(file, 0, f"no workflow templates in {root / 'templates'}")]
        )
    warnings = [
        ImportProblem(file, 1, f"column {c!r} is not used (ignored)")
        for c in unknown_columns(csv_path)
    ]
    rows = read_rows(csv_path, templates, known_levels())
    procedures = group_versions(file, rows)

    existing = _existing_catalogue(root, output)
    skipped: dict[str, str] = {}
    kept: list[ImportedProcedure] = []
    for procedure in procedures:
        defined = existing.versions(procedure.code) if existing is not None else ()
        if defined:
            skipped[procedure.code] = Path(defined[0].source_file).name
            warnings.extend(_differences(file, procedure, defined))
        else:
            kept.append(procedure)
    text = render_yaml(kept, file)
    target = _Target(root, output, plans_output)
    # The plans are drawn from the versions as the engine loads them, so the procedures are
    # validated alone first, then again with the plans.
    catalogue = _validate(text, target, kept, file)
    drafts, no_plans = plan_migrations(kept, catalogue)
    plans_text = render_plans_yaml(drafts, no_plans, file)
    _validate(text, target, kept, file, plans_text, drafts)
    partials = []
    for path, content in ((output, text), (plans_output, plans_text)):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".yaml.partial")
        partial.write_text(content, encoding="utf-8")
        partials.append((partial, path))
    for partial, path in partials:
        partial.replace(path)
    return ImportResult(
        kept, skipped, warnings, text, output, drafts, no_plans, plans_text, plans_output
    )


@dataclass(frozen=True, slots=True)
class _Target:
    """The catalogue an import joins and the two files it writes (or replaces) in it."""

    root: Path
    output: Path
    plans_output: Path


def _other_files(directory: Path, output: Path) -> list[Path]:
    """The catalogue's files the new one joins: all but the output and an earlier import of
    the same list (same file name), which the new file replaces."""
    if not directory.is_dir():
        return []
    replaced = {output.resolve(), (directory / output.name).resolve()}
    return sorted(p for p in directory.rglob("*.yaml") if p.resolve() not in replaced)


def _stage(target: _Target, staging: Path, *, migrations: bool) -> Path:
    """A catalogue root with the templates and every procedure file except the output (and,
    with `migrations`, every plan file except the plans output)."""
    root = target.root
    shutil.copytree(root / "templates", staging / "templates")
    kinds = [("procedures", target.output)]
    if migrations:
        kinds.append(("migrations", target.plans_output))
    for kind, output in kinds:
        (staging / kind).mkdir()
        for path in _other_files(root / kind, output):
            copy = staging / kind / path.relative_to(root / kind)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
    return staging / "procedures"


def _existing_catalogue(root: Path, output: Path) -> Catalogue | None:
    if not _other_files(root / "procedures", output):
        return None
    with tempfile.TemporaryDirectory(prefix="dossier-import-") as tmp:
        # Without the plans: this catalogue only says which codes are defined elsewhere, and a
        # plan for a code of the imported list could not load without that list.
        _stage(_Target(root, output, output), Path(tmp), migrations=False)
        try:
            catalogue = load_catalogue(Path(tmp))
        except WorkflowError as exc:
            raise CatalogueImportError(
                [
                    ImportProblem(str(root), 0, f"the existing catalogue is invalid: {p}")
                    for p in exc.problems
                ]
            ) from exc
    # Problems must name the real files, not the staged copies.
    return Catalogue(_relocated(v, root, Path(tmp)) for v in catalogue.all_versions())


def _relocated(version: ProcedureVersion, root: Path, staging: Path) -> ProcedureVersion:
    relative = Path(version.source_file).relative_to(staging / "procedures")
    return replace(version, source_file=str(root / "procedures" / relative))


def _validate(
    text: str,
    target: _Target,
    procedures: Sequence[ImportedProcedure],
    file: str,
    plans_text: str | None = None,
    drafts: Sequence[PlanDraft] = (),
) -> Catalogue:
    """Load the catalogue as the engine will, and name the CSV lines of whatever it rejects."""
    with tempfile.TemporaryDirectory(prefix="dossier-import-") as tmp:
        staged = _stage(target, Path(tmp), migrations=True)
        generated = staged / target.output.name
        generated.write_text(text, encoding="utf-8")
        generated_plans = Path(tmp) / "migrations" / target.plans_output.name
        if plans_text is not None:
            generated_plans.write_text(plans_text, encoding="utf-8")
        try:
            return load_catalogue(Path(tmp))
        except WorkflowError as exc:
            located: list[ImportProblem] = []
            for p in exc.problems:
                # A message naming another file (a plan's duplicate) must name the real one.
                message = p.message.replace(tmp, str(target.root))
                located.append(
                    _located_plan(p.path, message, drafts, file)
                    if p.file == str(generated_plans)
                    else _located(p.file == str(generated), p.path, message, procedures, file)
                )
            raise CatalogueImportError(located) from exc


def _located(
    ours: bool, path: str, message: str, procedures: Sequence[ImportedProcedure], file: str
) -> ImportProblem:
    if ours:
        match = _PROBLEM_PATH.match(path)
        if match:
            procedure = procedures[int(match.group(1))]
            version = procedure.versions[int(match.group(2) or 0)]
            detail = path[match.end() :].lstrip(".")
            return ImportProblem(file, version.line, f"{detail}: {message}" if detail else message)
        by_code = {p.code: p for p in procedures}
        if path in by_code:
            return ImportProblem(file, by_code[path].versions[0].line, f"{path}: {message}")
    return ImportProblem(file, 0, f"{path}: {message}")


def _located_plan(path: str, message: str, drafts: Sequence[PlanDraft], file: str) -> ImportProblem:
    match = _PLAN_PATH.match(path)
    if match and int(match.group(1)) < len(drafts):
        draft = drafts[int(match.group(1))]
        detail = path[match.end() :].lstrip(".")
        where = f"migration plan v{draft.from_version} -> v{draft.to_version}"
        return ImportProblem(
            file, draft.line, f"{where} {detail}: {message}" if detail else f"{where}: {message}"
        )
    by_code = {d.code: d for d in drafts}
    if path in by_code:
        return ImportProblem(file, by_code[path].line, f"migration plan: {message}")
    return ImportProblem(file, 0, f"migration plans: {path}: {message}")


def _differences(
    file: str, procedure: ImportedProcedure, defined: Sequence[ProcedureVersion]
) -> list[ImportProblem]:
    """Where a row says something else than the definition that wins over it."""
    where = Path(defined[0].source_file).name
    if len(procedure.versions) != len(defined):
        return [
            ImportProblem(
                file,
                procedure.versions[0].line,
                f"{procedure.code} has {len(procedure.versions)} version(s) here and "
                f"{len(defined)} in {where}, which is the one in force",
            )
        ]
    problems: list[ImportProblem] = []
    for row, version in zip(procedure.versions, defined, strict=True):
        for what, ours, theirs in _compare(row, version):
            problems.append(
                ImportProblem(
                    file,
                    row.line,
                    f"{procedure.code} v{version.version} {what}: {ours} here, {theirs} in "
                    f"{where}, which is the one in force",
                )
            )
    return problems


def _compare(row: RowVersion, version: ProcedureVersion) -> list[tuple[str, Any, Any]]:
    rules = {
        (r.fee_code, r.percent, r.full_online, r.valid_from, r.valid_to) for r in version.discounts
    }
    ours_rules = (
        {
            (
                f.code,
                row.discount.percent,
                row.discount.condition == "full-online",
                row.discount.valid_from,
                row.discount.valid_to,
            )
            for f in row.fees
        }
        if row.discount is not None
        else set()
    )
    pairs: list[tuple[str, Any, Any]] = [
        ("levels", row.levels, version.levels),
        ("template", row.template, version.template),
        ("effective_from", row.effective_from, version.effective_from),
        ("effective_to", row.effective_to, version.effective_to),
        ("working_days", row.working_days, version.deadline.working_days),
        ("per_level_days", dict(row.per_level), dict(version.deadline.per_level)),
        ("supplementation", row.supplementation, version.deadline.supplementation),
        (
            "fees",
            {f.code: f.amount for f in row.fees},
            {c: f.amount for c, f in version.fees.items()},
        ),
        ("discounts", sorted(ours_rules, key=str), sorted(rules, key=str)),
    ]
    return [(what, ours, theirs) for what, ours, theirs in pairs if ours != theirs]


__all__ = [
    "CatalogueImportError",
    "ImportProblem",
    "ImportResult",
    "ImportedProcedure",
    "NoPlan",
    "PlanDraft",
    "RowVersion",
    "import_catalogue",
    "plan_migrations",
    "read_rows",
    "read_templates",
    "render_plans_yaml",
    "render_yaml",
]
