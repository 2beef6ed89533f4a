"""A deterministic workload: a province's agencies and portals, as contract messages.

Given a seed, the same messages come out in the same order, each labelled with the outcome
the engine must reach for it ("valid", "duplicate" or the dead-letter reason), so tests and
the main job can check the engine's accounting against what was produced.

With a `ProvinceProfile` (`workflows/provinces/*.yaml`) the workload plays a real-looking
province: dossiers spread over procedures by their monthly volume, received by the agency
that handles them (a commune's dossier goes up to *its* district, a province procedure to the
department that decides it), agencies that differ in how often they run late, and arrivals
shaped like a working week: counters and post offices within office hours, the online portal
around the clock with evening and weekend traffic. Without one, procedures are drawn
uniformly and agencies from generated codes, as before.

An agency whose window ends (the districts, on 30 June 2025) hands its open dossiers to its
successor (contract 1.1, "Handover"): from the cutover the successor sends what the ended agency
would have sent, and the workload counts the handovers the engine must make
(`Workload.expected_handovers`). A dossier whose pinned version has a migration plan
(`workflows/migrations/`) continues under the plan's version from its cutover: its later steps
at the levels the plan renames, a transfer to an ended agency sent to one acting at the renamed
level instead, and the workload counts the migrations (`Workload.expected_migrations`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import random
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.calendar import VN_TZ, WorkingCalendar
from engine.events import SUBMISSION_TOPIC
from engine.procedures import (
    Catalogue,
    Fee,
    MigrationPlan,
    ProcedureVersion,
    default_workflows_dir,
)
from engine.registry import SIGNATURE_HEADER

HOUR = 3600
# The province's public-service portal: the sender of the simulated dossier.submission traffic
# (a registered sender, with a TEST-ONLY key in simulation_registry.yaml).
PORTAL = "urn:vn:portal:dichvucong.thainguyen.gov.vn"
VALID = "valid"
DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class SimulatedMessage:
    topic: str  # contract topic, without deployment prefix
    key: bytes | None
    value: bytes
    expected: str  # "valid", "duplicate", or a dead-letter reason ("malformed", "schema", ...)
    time: datetime  # business time of the action (arrival order follows it)
    dossier: str | None = None
    hostile: str | None = None  # the hostile sender's kind (HOSTILE_REASONS) that made it
    # Kafka headers: a `ce-signature` when the sending system signs (contract 1.1).
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Shares:
    """Probabilities of the paths a dossier takes; defaults follow the seed's province."""

    online: float = 0.678
    postal: float = 0.02
    full_online_given_online: float = 0.6
    refused: float = 0.03
    supplementation: float = 0.10
    abandoned_supplementation: float = 0.1  # of those, the applicant never comes back
    withdrawal: float = 0.02
    stopped: float = 0.01
    reschedule: float = 0.03
    overdue: float = 0.07
    rejected_outcome: float = 0.04
    vneid: float = 0.85
    digitised: float = 0.95
    enterprise_at_province: float = 0.4  # applicants of province procedures that are enterprises
    # Online traffic on a non-working day, relative to a working day (the portal never closes).
    online_on_days_off: float = 0.3
    # A procedure version that has just come into force (the 1 July 2025 reorganisation, a new
    # decree) runs late more often while agencies learn it: overdue share times this factor,
    # for dossiers submitted within `new_version_days` of the version's first day.
    new_version_overdue_factor: float = 1.8
    new_version_days: int = 21


# What hostile or careless senders do, and the dead-letter reason contract 1.1 ("Rules": Money,
# Time, Strings) gives each. All but the wrong payment and the conflicting copy are refused before
# any dossier is looked at.
HOSTILE_REASONS: Mapping[str, str] = {
    "poison-string": "malformed",  # a lone UTF-16 surrogate escape in the applicant's name
    "duplicate-key": "malformed",  # a JSON member named twice
    "wrong-key": "malformed",  # a Kafka key that is not the event's subject
    "implausible-time": "schema",  # `time` in year 9999, a century ahead, or in 1970
    "oversized-string": "schema",  # an officer or reason of OVERSIZED_CHARS characters
    "forged-fee": "schema",  # a submission setting a fee the catalogue fixes
    "wrong-payment": "invalid-transition",  # an amount other than the one payable
    "conflicting-copy": "conflict",  # a parked input's (source, id) with other content
}
HOSTILE_KINDS = tuple(HOSTILE_REASONS)
# Far beyond any sane limit on a name or a reason, yet the whole input stays well under the
# contract's 1 MiB message limit: it is the schema's maxLength that must refuse it.
OVERSIZED_CHARS = 100_000
# Default shares as multiples of --bad-share: at the main job's size each kind then makes a few
# dozen inputs, a tenth or so of the older bad inputs together; kinds made from rarer inputs (a
# payment, an input delivered early) take a larger share of them.
_DEFAULT_FACTORS: Mapping[str, float] = {
    "poison-string": 0.5,
    "duplicate-key": 0.1,
    "wrong-key": 0.1,
    "implausible-time": 0.1,
    "oversized-string": 0.2,
    "forged-fee": 1.0,
    "wrong-payment": 1.0,
    "conflicting-copy": 5.0,
}


@dataclass(frozen=True)
class Hostile:
    """How often hostile senders strike: for each kind, the share of the inputs it can be made
    from that get one. An input it can be made from is:"""

    poison_string: float = 0.0  # a submission (the name is the applicant's)
    duplicate_key: float = 0.0  # any input
    wrong_key: float = 0.0  # any input
    implausible_time: float = 0.0  # any input
    oversized_string: float = 0.0  # an input with an officer or a reason (_FREE_TEXT)
    forged_fee: float = 0.0  # a submission whose procedure has a fixed fee
    wrong_payment: float = 0.0  # a payment
    conflicting_copy: float = 0.0  # an input delivered before its predecessor (reorder_share)

    @classmethod
    def relative_to(cls, bad_share: float) -> Hostile:
        """The defaults: small, and none without other bad inputs."""
        return cls(**{_field(k): min(0.5, bad_share * f) for k, f in _DEFAULT_FACTORS.items()})

    def share(self, kind: str) -> float:
        return float(getattr(self, _field(kind)))

    def with_share(self, kind: str, share: float) -> Hostile:
        return replace(self, **{_field(kind): share})

    def as_dict(self) -> dict[str, float]:
        return {kind: self.share(kind) for kind in HOSTILE_KINDS}


def _field(kind: str) -> str:
    if kind not in HOSTILE_REASONS:
        raise ValueError(f"unknown hostile kind {kind!r} (one of {', '.join(HOSTILE_KINDS)})")
    return kind.replace("-", "_")


# Online submissions by hour of the day (relative): office hours, and evenings at home.
ONLINE_HOURS = (
    0.15, 0.08, 0.05, 0.05, 0.05, 0.1, 0.4, 1.0, 1.6, 1.8, 1.7, 1.3,
    0.8, 1.0, 1.6, 1.7, 1.5, 1.2, 0.9, 1.0, 1.2, 1.1, 0.7, 0.35,
)  # fmt: skip
FAMILY_NAMES = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi", "Đỗ", "Ngô", "Dương")
GIVEN_NAMES = (
    "Văn An", "Thị Bình", "Văn Cường", "Thị Dung", "Minh Đức", "Thu Hà", "Quang Huy", "Thị Lan",
    "Văn Long", "Thị Mai", "Hoàng Nam", "Thị Ngọc", "Đức Phúc", "Thị Quyên", "Văn Sơn",
    "Thanh Tâm", "Thị Trang", "Anh Tuấn", "Thị Vân", "Hải Yến",
)  # fmt: skip
ENTERPRISES = ("Công ty TNHH", "Công ty cổ phần", "Hợp tác xã", "Doanh nghiệp tư nhân")


# ---------------------------------------------------------------------------------------------
# The province: agencies and demand
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgencyInfo:
    code: str
    name: str
    level: str
    weight: float = 1.0  # relative share of its level's dossiers (population served)
    parent: str | None = None  # the agency of the next level up that it belongs to
    effective_from: date | None = None
    effective_to: date | None = None  # inclusive: districts end on 2025-06-30
    procedures: tuple[str, ...] = ()  # procedures it decides (province departments)
    # Who holds its open dossiers from the day after `effective_to` (contract 1.1, "Handover"),
    # and, by the workflow level of a dossier's current step, who holds those instead.
    successor: str | None = None
    successor_by_level: Mapping[str, str] = field(default_factory=dict)

    def in_force_on(self, day: date) -> bool:
        if self.effective_from is not None and day < self.effective_from:
            return False
        return self.effective_to is None or day <= self.effective_to


# The districts' last day (two-tier local government from 1 July 2025).
LAST_DISTRICT_DAY = date(2025, 6, 30)
# The shipped registry's successor of every district (workflows/provinces/thai-nguyen.yaml): the
# engine hands the districts' open dossiers to it, so the simulator without a profile must play
# the same agency.
DEFAULT_DISTRICT_SUCCESSOR = "000.00.42.H56"


def _default_districts() -> dict[str, AgencyInfo]:
    by_level = _shipped_district_successors_by_level()
    return {
        code: AgencyInfo(
            code,
            code,
            "district",
            effective_to=LAST_DISTRICT_DAY,
            successor=DEFAULT_DISTRICT_SUCCESSOR,
            successor_by_level=by_level.get(code, {}),
        )
        for code in (f"000.00.{30 + i}.H56" for i in range(9))
    }


@functools.cache
def _shipped_district_successors_by_level() -> dict[str, dict[str, str]]:
    """The shipped registry's districts' successors by level (its first commune for a dossier
    at a commune step): the simulator without a profile plays what the engine does with it."""
    with default_profile_path().open(encoding="utf-8") as handle:
        document = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {
        str(raw["code"]): {str(k): str(v) for k, v in raw["successor_by_level"].items()}
        for raw in document.get("agencies") or ()
        if raw.get("level") == "district" and raw.get("successor_by_level")
    }


@dataclass(frozen=True, slots=True)
class Ending:
    """An agency whose window ends, who holds its open dossiers next, and from when: 00:00 local
    time the day after its last day (contract 1.1, "Handover"; engine.registry.Ending)."""

    agency: str
    level: str
    successor: str
    successor_level: str
    cutover: datetime
    # By the workflow level of a dossier's current step: (its successor there, that one's level).
    by_level: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def levels(self) -> str:
        """How the manifest and the summary name a handover: former level → new level."""
        return handover_levels(self.level, self.successor_level)

    def successor_for(self, step_level: str | None) -> tuple[str, str]:
        """Who takes a dossier whose current step is at `step_level`, and at which level
        (engine.registry.Ending.successor_for)."""
        if step_level is not None and step_level in self.by_level:
            return self.by_level[step_level]
        return self.successor, self.successor_level


def handover_levels(former: str, new: str) -> str:
    return f"{former} → {new}"


def migration_levels(source: ProcedureVersion, target: ProcedureVersion) -> str:
    """How the manifest and the summary name a migration: the two versions' levels
    ("commune/district → commune/province"), a handful of labels for 147 plans."""
    return f"{'/'.join(source.levels)} → {'/'.join(target.levels)}"


@dataclass
class Agencies:
    """Agency codes by level; the province's districts end on 1 July 2025. Without a profile,
    codes the shipped registry (workflows/provinces/thai-nguyen.yaml) has at those levels."""

    communes: list[str] = field(
        default_factory=lambda: [f"000.{20 + i // 90:02d}.{i % 90 + 10:02d}.H56" for i in range(58)]
    )
    districts: list[str] = field(default_factory=lambda: list(_default_districts()))
    province: list[str] = field(
        default_factory=lambda: [f"000.00.{40 + i:02d}.H56" for i in range(12)]
    )
    info: dict[str, AgencyInfo] = field(default_factory=_default_districts)

    @classmethod
    def from_infos(cls, infos: Sequence[AgencyInfo]) -> Agencies:
        def of(level: str) -> list[str]:
            return [a.code for a in infos if a.level == level]

        return cls(of("commune"), of("district"), of("province"), {a.code: a for a in infos})

    def of_level(self, level: str) -> list[str]:
        return {"commune": self.communes, "district": self.districts, "province": self.province}[
            level
        ]

    def name(self, code: str) -> str:
        known = self.info.get(code)
        return known.name if known is not None else code

    def level(self, code: str) -> str | None:
        known = self.info.get(code)
        if known is not None:
            return known.level
        for level in ("commune", "district", "province"):
            if code in self.of_level(level):
                return level
        return None

    def in_force(self, level: str, day: date) -> list[str]:
        codes = self.of_level(level)
        live = [c for c in codes if c not in self.info or self.info[c].in_force_on(day)]
        # A level with no agency left in force (districts after 2025-06-30) may still be named
        # by a version pinned before its end: the former agency is picked, and its successor
        # acts for it once it has ended (`Workload._dossier_life`).
        return live or codes

    def weight(self, code: str) -> float:
        known = self.info.get(code)
        return known.weight if known is not None else 1.0

    def parent(self, code: str) -> str | None:
        known = self.info.get(code)
        return known.parent if known is not None else None

    def acts_on(self, code: str, day: date) -> bool:
        """Whether the agency may act on this local date (contract 1.1: its window)."""
        known = self.info.get(code)
        return known is None or known.in_force_on(day)

    def successor_on(self, code: str, day: date, step_level: str | None = None) -> str | None:
        """Who acts for agency `code` on `day`: itself while its window is open, else its
        successor (the one it names for `step_level`, the level of the dossier's current step,
        if it names one), followed further if that one has ended too
        (engine.registry.successor_on); None when the chain ends with nobody acting."""
        known = self.info.get(code)
        if (
            step_level is not None
            and known is not None
            and step_level in known.successor_by_level
            and not self.acts_on(code, day)
        ):
            code = known.successor_by_level[step_level]
        seen: set[str] = set()
        current: str | None = code
        while current is not None and current not in seen:
            if self.acts_on(current, day):
                return current
            seen.add(current)
            known = self.info.get(current)
            current = known.successor if known is not None else None
        return None

    def endings(self) -> list[Ending]:
        """Every agency whose window ends and that has someone acting after it, by cutover
        then code: the handovers the engine makes (engine.registry.Registry.endings)."""
        found: list[Ending] = []
        for info in self.info.values():
            if info.effective_to is None or info.successor is None:
                continue
            day = info.effective_to + timedelta(days=1)
            successor = self.successor_on(info.successor, day)
            level = self.level(successor) if successor is not None else None
            if successor is None or level is None:
                continue
            cutover = datetime.combine(day, time(0), VN_TZ)
            by_level = {
                step_level: (acting, acting_level)
                for step_level, code in sorted(info.successor_by_level.items())
                if (acting := self.successor_on(code, day)) is not None
                and (acting_level := self.level(acting)) is not None
            }
            found.append(Ending(info.code, info.level, successor, level, cutover, by_level))
        return sorted(found, key=lambda e: (e.cutover, e.agency))


@dataclass
class ProvinceProfile:
    """What the simulator plays: agencies, who decides what, and how busy each procedure is."""

    name: str
    agencies: Agencies
    monthly_dossiers: dict[str, float]  # procedure code -> dossiers per month, province-wide
    deciding_agency: dict[str, str]  # procedure code -> the province department deciding it
    # TEST-ONLY keys the province's systems sign with: principal (agency code, or a sender's
    # source) -> (key id, private key). Empty: nothing is signed.
    signing_keys: dict[str, tuple[str, Ed25519PrivateKey]] = field(default_factory=dict)

    @property
    def monthly_total(self) -> float:
        return sum(self.monthly_dossiers.values())

    @classmethod
    def load(cls, path: Path | None = None) -> ProvinceProfile:
        path = path or default_profile_path()
        with path.open(encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
        infos: list[AgencyInfo] = []
        deciding: dict[str, str] = {}
        for raw in document.get("agencies") or ():
            info = AgencyInfo(
                code=str(raw["code"]),
                name=str(raw.get("name") or raw["code"]),
                level=str(raw["level"]),
                weight=float(raw.get("weight", 1.0)),
                parent=raw.get("parent"),
                effective_from=_as_date(raw.get("effective_from")),
                effective_to=_as_date(raw.get("effective_to")),
                procedures=tuple(str(p) for p in raw.get("procedures") or ()),
                successor=str(raw["successor"]) if raw.get("successor") else None,
                successor_by_level={
                    str(k): str(v) for k, v in (raw.get("successor_by_level") or {}).items()
                },
            )
            infos.append(info)
            for procedure in info.procedures:
                deciding[procedure] = info.code
        monthly = {str(k): float(v) for k, v in (document.get("monthly_dossiers") or {}).items()}
        return cls(
            str(document.get("province", path.stem)),
            Agencies.from_infos(infos),
            monthly,
            deciding,
            load_signing_keys(),
        )


def default_profile_path() -> Path:
    return default_workflows_dir() / "provinces" / "thai-nguyen.yaml"


# TEST ONLY: the simulated systems' private keys (written by dossier.tools.generate_catalogue;
# their public halves are the extra registry file simulation_registry.yaml beside it).
SIMULATION_KEYS = Path(__file__).resolve().parent / "simulation_keys.yaml"
SIMULATION_REGISTRY = Path(__file__).resolve().parent / "simulation_registry.yaml"


@functools.cache
def load_signing_keys(path: Path = SIMULATION_KEYS) -> dict[str, tuple[str, Ed25519PrivateKey]]:
    with path.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle) or {}
    return {
        str(principal): (
            str(entry["id"]),
            Ed25519PrivateKey.from_private_bytes(base64.b64decode(entry["ed25519_private"])),
        )
        for principal, entry in (document.get("keys") or {}).items()
    }


def _as_date(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def performance(agency: str) -> float:
    """How much more (or less) often than average an agency runs late: a stable trait.

    Derived from the code rather than the seed, so an agency is the same in every run: most
    are near or below average, a few are well above (mean 1.0).
    """
    u = (zlib.crc32(agency.encode("utf-8")) % 10_000) / 10_000
    return 0.35 + 2.6 * u**3


# ---------------------------------------------------------------------------------------------
# The workload
# ---------------------------------------------------------------------------------------------


# Inputs that close a dossier (its state becomes final): after one, nobody hands it over.
_CLOSING_KINDS = frozenset(
    {"reception-refused", "withdrawal-requested", "stopped", "result-returned"}
)


@dataclass
class _Life:
    """One dossier's messages, and who holds it when, as the engine will see it: what the
    handovers it expects are worked out from."""

    messages: list[SimulatedMessage] = field(default_factory=list)
    # From each input that sets it (the submission, each transfer): when, and the agency.
    holders: list[tuple[datetime, str]] = field(default_factory=list)
    closed_at: datetime | None = None  # the input that makes it final
    # The transfer its life stopped at, to an agency that has ended: (when, "from → to" levels).
    stranded: tuple[datetime, str] | None = None
    # The plan of its pinned version, if any; then its state after each input (the plan moves
    # only a dossier in a state it maps), and the first input it was played past the plan with.
    plan: MigrationPlan | None = None
    states: list[tuple[datetime, str]] = field(default_factory=list)
    migrated_at: datetime | None = None
    # The version it is pinned to and the plan's, for a dossier with a plan: the workflow level
    # of its step at a cutover says which successor the engine hands it to.
    version: ProcedureVersion | None = None
    target: ProcedureVersion | None = None

    def until(self, moment: datetime | None) -> _Life:
        """The life as far as it is played: nothing after `moment`."""
        if moment is None:
            return self
        closed = self.closed_at if self.closed_at is not None and self.closed_at <= moment else None
        stranded = (
            self.stranded if self.stranded is not None and self.stranded[0] <= moment else None
        )
        migrated = (
            self.migrated_at
            if self.migrated_at is not None and self.migrated_at <= moment
            else None
        )
        return _Life(
            [m for m in self.messages if m.time <= moment],
            [(t, a) for t, a in self.holders if t <= moment],
            closed,
            stranded,
            self.plan,
            [(t, s) for t, s in self.states if t <= moment],
            migrated,
            self.version,
            self.target,
        )

    def step_level_at(self, moment: datetime) -> str | None:
        """The workflow level of the dossier's step just before `moment` (under the plan's
        version once the plan has moved it, as the engine migrates before it hands over), for
        a dossier with a plan; None for the others (a district holds them at a district step,
        whose successor is the agency's own)."""
        plan, version = self.plan, self.version
        before = [state for at, state in self.states if at < moment]
        if plan is None or version is None or not before:
            return None
        state = before[-1]
        if self.target is not None and moment >= plan.cutover and plan.maps(state):
            return self.target.states[plan.states[state]].level
        return version.states[state].level if state in version.states else None

    def migration(self, horizon: datetime) -> MigrationPlan | None:
        """The migration the engine makes of this dossier by `horizon` (the latest time it
        applies): once the clock passes the plan's cutover, if the dossier is open then in a
        state the plan maps; or just before a later input that found it in such a state."""
        plan = self.plan
        if plan is None or horizon < plan.cutover:
            return None
        if self.migrated_at is not None:
            return plan
        if self.closed_at is not None and self.closed_at < plan.cutover:
            return None
        before = [state for at, state in self.states if at < plan.cutover]
        return plan if before and plan.maps(before[-1]) else None

    def handovers(
        self, endings: Sequence[Ending], horizon: datetime
    ) -> list[tuple[Ending, str, str]]:
        """The handovers the engine makes of this dossier, each with the successor that takes
        it and that one's level: at each cutover up to `horizon` (the latest time the engine
        applies), if the agency that ended holds it and it is not final. A cutover comes before
        an input at the same instant, as in the engine (an input dated at or after the cutover
        is decided on the dossier as the successor holds it)."""
        made: list[tuple[Ending, str, str]] = []
        holder: str | None = None
        cutovers = iter(e for e in endings if e.cutover <= horizon)
        pending = next(cutovers, None)
        for at, agency in [*self.holders, (datetime.max.replace(tzinfo=VN_TZ), "")]:
            while pending is not None and pending.cutover <= at:
                open_then = self.closed_at is None or self.closed_at >= pending.cutover
                if holder == pending.agency and open_then:
                    successor, level = pending.successor_for(self.step_level_at(pending.cutover))
                    made.append((pending, successor, level))
                    holder = successor
                pending = next(cutovers, None)
            holder = agency
        return made


class Workload:
    def __init__(
        self,
        catalogue: Catalogue,
        calendar: WorkingCalendar,
        *,
        seed: int,
        start: datetime,
        end: datetime,
        dossiers: int,
        procedures: Sequence[str] | None = None,
        shares: Shares | None = None,
        duplicate_share: float = 0.0,
        bad_share: float = 0.0,
        reorder_share: float = 0.0,
        hostile: Hostile | None = None,
        profile: ProvinceProfile | None = None,
        until: datetime | None = None,
        signing_keys: Mapping[str, tuple[str, Ed25519PrivateKey]] | None = None,
    ) -> None:
        """`until`: leave out every action after this instant, so dossiers still open then stay
        open (a snapshot of a month's work) instead of being played to their end.
        `signing_keys`: who signs with which key (default: the profile's, or without one the
        TEST-ONLY keys file's); empty: nothing is signed."""
        self.catalogue = catalogue
        self.calendar = calendar
        self.seed = seed
        self.rng = random.Random(seed)
        self.start = start.astimezone(VN_TZ)
        self.end = end.astimezone(VN_TZ)
        self.until = until.astimezone(VN_TZ) if until is not None else None
        self.dossiers = dossiers
        self.shares = shares or Shares()
        self.duplicate_share = duplicate_share
        self.bad_share = bad_share
        self.reorder_share = reorder_share
        self.hostile = hostile or Hostile()
        self.profile = profile
        if signing_keys is None:
            signing_keys = profile.signing_keys if profile is not None else load_signing_keys()
        self.signing_keys = signing_keys
        self.procedures = list(procedures or catalogue.codes())
        self.agencies = profile.agencies if profile is not None else Agencies()
        weights = profile.monthly_dossiers if profile is not None else {}
        self._weights = [
            max(0.0, weights.get(code, 0.0 if weights else 1.0)) for code in self.procedures
        ]
        if not any(self._weights):
            self._weights = [1.0] * len(self.procedures)
        self._cumulative = list(_accumulate(self._weights))
        self._serial: dict[tuple[str, str], int] = {}
        self._ids = 0
        self._days: list[tuple[date, bool]] | None = None
        # Dossier code -> (fees requested, amount payable after discounts), for wrong payments.
        self._payments: dict[str, tuple[int, int]] = {}
        # Values of the inputs delivered before their predecessor: the engine parks them.
        self._early: set[bytes] = set()
        # Contract 1.1, "Handover": the agencies that end, and what `messages()` expects of them.
        self.endings = self.agencies.endings()
        self._cutovers = sorted({e.cutover for e in self.endings})
        self.handovers: Counter[str] = Counter()  # former → new level -> dossiers
        self.handed_over: dict[str, str] = {}  # dossier code -> the successor holding it
        self.stranded: Counter[str] = Counter()
        self.migrations: Counter[str] = Counter()  # the versions' levels -> dossiers
        self.migrated: dict[str, int] = {}  # dossier code -> the version it was moved to

    # -----------------------------------------------------------------------------------------
    def messages(self) -> list[SimulatedMessage]:
        """Every message, in arrival order."""
        stream: list[SimulatedMessage] = []
        lives: list[_Life] = []
        for _ in range(self.dossiers):
            channel = self._channel()
            life = self._dossier_life(self._arrival(channel), channel).until(self.until)
            stream.extend(life.messages)
            lives.append(life)
        stream.sort(key=lambda m: m.time)
        self._expect_handovers(lives, stream[-1].time if stream else None)
        stream = self._reorder(stream)
        stream = self._add_duplicates(stream)
        stream = self._add_bad_inputs(stream)
        stream = self._add_hostile_inputs(stream)
        return self._signed(stream)

    # --- handovers (contract 1.1) --------------------------------------------------------------
    def _expect_handovers(self, lives: Sequence[_Life], horizon: datetime | None) -> None:
        """What the engine will hand over, for the manifest: each dossier an ended agency holds,
        not final, when the clock passes its cutover.

        The engine judges by the clock of the dossier's partition (docs/CONTRACT.md, "Handovers
        (1.1)"); here the workload's latest valid input stands for every partition's, which holds
        whenever each partition sees work after the cutover (any workload of a few days past it:
        the main job's every partition sees thousands of inputs a day). A dossier with an input
        of its own after the cutover is handed over just before it in any case."""
        self.handovers = Counter()
        self.handed_over = {}
        self.stranded = Counter()
        self.migrations = Counter()
        self.migrated = {}
        if horizon is None:
            return
        for life in lives:
            if not life.messages or life.messages[0].dossier is None:
                continue
            code = life.messages[0].dossier
            for ending, successor, level in life.handovers(self.endings, horizon):
                self.handovers[handover_levels(ending.level, level)] += 1
                self.handed_over[code] = successor
            if life.stranded is not None:
                self.stranded[life.stranded[1]] += 1
        self._expect_migrations(lives, horizon)

    def _expect_migrations(self, lives: Sequence[_Life], horizon: datetime) -> None:
        """What the engine will migrate, for the manifest: each dossier open in a state its
        plan maps once the clock passes the plan's cutover (the same clock as the handovers').
        A migration does not change who holds a dossier, so the handovers stand as they are;
        where both fall at one cutover the engine migrates first."""
        self.migrations = Counter()
        self.migrated = {}
        for life in lives:
            plan = life.migration(horizon)
            code = life.messages[0].dossier if life.messages else None
            if plan is None or code is None:
                continue
            source = self.catalogue.get(plan.procedure, plan.from_version)
            target = self.catalogue.get(plan.procedure, plan.to_version)
            assert source is not None and target is not None  # checked when the plan loaded
            self.migrations[migration_levels(source, target)] += 1
            self.migrated[code] = plan.to_version

    def expected_handovers(self) -> dict[str, int]:
        """Dossiers the engine must hand over, by former → new level (after `messages()`)."""
        return dict(sorted(self.handovers.items()))

    def expected_migrations(self) -> dict[str, int]:
        """Dossiers the engine must move to another workflow version by a plan, by the two
        versions' levels (after `messages()`)."""
        return dict(sorted(self.migrations.items()))

    def stranded_dossiers(self) -> dict[str, int]:
        """Dossiers whose life stops at a transfer to an agency that has ended, by the
        transfer's levels (after `messages()`): the engine refuses such a transfer
        (`to-agency-window`) and hands over only the dossiers an ended agency holds, so nobody
        may take the next step their workflow version gives (docs/CONTRACT.md, "Handovers"),
        unless a migration plan moves them to a version that gives the step to another level."""
        return dict(sorted(self.stranded.items()))

    # --- signatures (contract 1.1) --------------------------------------------------------------
    def _signed(self, stream: list[SimulatedMessage]) -> list[SimulatedMessage]:
        """Each message of a system that holds a key, with its `ce-signature` header: the agency
        a level topic's input names, the sender of a submission. Careless and hostile inputs
        made from a signing system's are signed too: their reasons are the contract's other
        rules, which the signature rule must not hide."""
        keys = self.signing_keys
        if not keys:
            return stream
        signed: list[SimulatedMessage] = []
        for message in stream:
            principal = _principal(message)
            key = keys.get(principal) if principal is not None else None
            if key is None:
                signed.append(message)
                continue
            key_id, private = key
            signature = base64.b64encode(private.sign(message.value)).decode("ascii")
            header = (SIGNATURE_HEADER, f"{key_id}:{signature}".encode("ascii"))
            signed.append(replace(message, headers=(*message.headers, header)))
        return signed

    # --- arrivals ------------------------------------------------------------------------------
    def _channel(self) -> int:
        roll = self.rng.random()
        online, postal = self.shares.online, self.shares.postal
        return 2 if roll < online else (3 if roll < online + postal else 1)

    def _calendar_days(self) -> list[tuple[date, bool]]:
        if self._days is None:
            days: list[tuple[date, bool]] = []
            day = self.start.date()
            while datetime.combine(day, time(0), VN_TZ) < self.end:
                days.append((day, self.calendar.is_working_day(day)))
                day += timedelta(days=1)
            self._days = days or [(self.start.date(), True)]
        return self._days

    def _arrival(self, channel: int) -> datetime:
        """When the applicant submits: counters and post within office hours, online any time."""
        rng = self.rng
        days = self._calendar_days()
        working = [d for d, w in days if w] or [d for d, _ in days]
        for _ in range(20):
            if channel == 2:
                day_off_weight = self.shares.online_on_days_off
                weights = [1.0 if w else day_off_weight for _, w in days]
                day = rng.choices([d for d, _ in days], weights)[0]
                hour = rng.choices(range(24), ONLINE_HOURS)[0]
                moment = time(hour, rng.randrange(60), rng.randrange(60))
            else:
                day = rng.choice(working)
                if rng.random() < 0.58:  # the morning queue is the longer one
                    seconds = rng.randrange(7 * HOUR + 1800, 11 * HOUR + 1800)
                else:
                    seconds = rng.randrange(13 * HOUR + 1800, 16 * HOUR + 2700)
                moment = time(seconds // HOUR, seconds % HOUR // 60, seconds % 60)
            at = datetime.combine(day, moment, VN_TZ)
            if self.start <= at < self.end:
                return at
        return self.start

    # --- choices -------------------------------------------------------------------------------
    def _pick_procedure(self, at: datetime) -> ProcedureVersion | None:
        """A procedure by its share of the dossiers, among those in force at `at`."""
        for _ in range(20):
            index = _bisect(self._cumulative, self.rng.random() * self._cumulative[-1])
            version = self.catalogue.in_force(self.procedures[index], at)
            if version is not None:
                return version
        return None

    def _agency(self, level: str, at: datetime, procedure: str, near: str | None) -> str:
        """The agency at `level` that handles this dossier."""
        agencies, rng = self.agencies, self.rng
        if level == "province" and self.profile is not None:
            deciding = self.profile.deciding_agency.get(procedure)
            if deciding is not None:
                return deciding
        if near is not None:
            parent = agencies.parent(near)
            if parent is not None and agencies.level(parent) == level:
                return parent
        candidates = agencies.in_force(level, at.date())
        if level == "province" and self.profile is None:
            return rng.choice(candidates)
        weights = [agencies.weight(c) for c in candidates]
        return rng.choices(candidates, weights)[0]

    def _stand_in(self, level: str, day: date, procedure: str, former: str) -> str | None:
        """Who takes an ended agency's part in a migrated dossier at `level` on `day`: its
        successor if that acts at this level, the province department deciding the procedure,
        else one acting at this level in the ended agency's area (its children), else any
        acting at this level; None if nobody acts there."""
        agencies = self.agencies
        successor = agencies.successor_on(former, day, level)
        if successor is not None and agencies.level(successor) == level:
            return successor
        if level == "province" and self.profile is not None:
            deciding = self.profile.deciding_agency.get(procedure)
            if deciding is not None and agencies.acts_on(deciding, day):
                return deciding
        acting = [c for c in agencies.of_level(level) if agencies.acts_on(c, day)]
        candidates = [c for c in acting if agencies.parent(c) == former] or acting
        if not candidates:
            return None
        return self.rng.choices(candidates, [agencies.weight(c) for c in candidates])[0]

    def _applicant(self, version: ProcedureVersion) -> dict[str, str]:
        rng = self.rng
        if "province" in version.levels and rng.random() < self.shares.enterprise_at_province:
            return {
                "kind": "enterprise",
                "id_number": f"46{rng.randrange(10**7, 10**8)}",  # a tax code
                "name": f"{rng.choice(ENTERPRISES)} {rng.choice(GIVEN_NAMES).split()[-1]}",
            }
        return {
            "kind": "citizen",
            "id_number": f"0{rng.randrange(10**10, 10**11)}",
            "name": f"{rng.choice(FAMILY_NAMES)} {rng.choice(GIVEN_NAMES)}",
        }

    def _dossier_code(self, agency: str, day: datetime) -> str:
        slot = (agency, day.strftime("%y%m%d"))
        self._serial[slot] = self._serial.get(slot, 0) + 1
        return f"{agency}-{slot[1]}-{self._serial[slot]:04d}"

    def _envelope(
        self, kind: str, code: str, time: datetime, source: str, data: dict[str, Any]
    ) -> bytes:
        self._ids += 1
        return _dump(
            {
                "specversion": "1.0",
                "id": f"sim-{self.seed}-{self._ids:09d}",
                "source": source,
                "type": f"vn.gov.dossier.{kind}",
                "subject": code,
                "time": time.isoformat(),
                "datacontenttype": "application/json",
                "data": data,
            }
        )

    # --- one dossier ---------------------------------------------------------------------------
    def _dossier_life(self, t: datetime, channel: int = 1) -> _Life:
        rng, shares, cal, agencies = self.rng, self.shares, self.calendar, self.agencies
        life = _Life()
        version = self._pick_procedure(t)
        if version is None:
            return life
        rcv = version.receiving_level
        upper = next((lvl for lvl in version.levels if lvl != rcv), None)
        receiving = self._agency(rcv, t, version.code, None)
        upper_agency = (
            self._agency(upper, t, version.code, receiving) if upper is not None else None
        )
        code = self._dossier_code(receiving, t)
        out = life.messages
        stopped = False
        plan = self.catalogue.migration_from(version.code, version.version)
        # Only a dossier with a plan is followed through its workflow: the others' lives (and
        # the random draws they take) are what they were before plans existed.
        life.plan = plan
        if plan is not None:
            life.version = version
            life.target = self.catalogue.get(plan.procedure, plan.to_version)
        workflow, state = version, version.initial
        # An ended agency's part in this dossier, once a migration sent its step elsewhere:
        # the agency that took it (the successor acts only for dossiers it was handed).
        stand_ins: dict[str, str] = {}

        def migrate(when: datetime) -> None:
            """The engine moves the dossier to the plan's version before an input dated at or
            after the cutover, if its state is one the plan maps (or already did, by its
            clock): from then on its steps are the new version's."""
            nonlocal workflow, state
            if plan is None or life.migrated_at is not None or when < plan.cutover:
                return
            if life.closed_at is not None or not plan.maps(state):
                return
            target = self.catalogue.get(plan.procedure, plan.to_version)
            assert target is not None  # checked when the plan loaded
            workflow, state = target, plan.states[state]
            life.migrated_at = when

        def emit(kind: str, level: str | None, when: datetime, **data: Any) -> None:
            nonlocal stopped, state
            if stopped:
                return
            day = when.astimezone(VN_TZ).date()
            migrate(when)
            acting = data.get("agency")
            if acting in stand_ins:
                data["agency"] = acting = stand_ins[acting]
                level = agencies.level(acting)
            if level is not None and acting is not None and not agencies.acts_on(acting, day):
                # Contract 1.1, "Handover": from the cutover the ended agency's successor holds
                # its open dossiers (the engine hands each over before its first input dated
                # after the cutover, if its partition's clock has not already) and takes the
                # steps the ended agency would have taken, from its own level's topic.
                # The successor the engine picks by the level of the dossier's current step.
                step_level = workflow.states[state].level if plan is not None else level
                successor = agencies.successor_on(acting, day, step_level)
                successor_level = agencies.level(successor) if successor is not None else None
                if successor is None or successor_level is None:
                    stopped = True  # nobody acts for it: the engine would refuse the input
                    return
                if plan is not None:
                    stand_ins[acting] = successor  # it holds the dossier from now on
                data["agency"], level = successor, successor_level
            target = data.get("to_agency")
            if target is not None and plan is not None and life.migrated_at is not None:
                # Under the plan's version the transfer goes to the level the plan renames
                # its target's to; an ended agency's part there is taken by one acting that day.
                to_level = plan.level(str(data["to_level"]))
                data["to_level"] = to_level
                if not agencies.acts_on(target, day) or agencies.level(target) != to_level:
                    taker = stand_ins.get(target) or self._stand_in(
                        to_level, day, version.code, target
                    )
                    if taker is not None:
                        stand_ins[target] = data["to_agency"] = target = taker
            if target is not None and not agencies.acts_on(target, day):
                # A transfer to an agency that has ended is refused (`to-agency-window`), and the
                # engine hands over only the dossiers an ended agency holds: no one may take the
                # next step this dossier's workflow version gives, so its life stops here.
                stopped = True
                life.stranded = (when, f"{level} → {agencies.level(target)}")
                return
            topic = SUBMISSION_TOPIC if level is None else f"dossier.{level}"
            source = PORTAL if level is None else f"urn:vn:agency:{data.get('agency', receiving)}"
            value = self._envelope(kind, code, when, source, data)
            out.append(SimulatedMessage(topic, code.encode(), value, VALID, when, code))
            if kind == "submitted":
                life.holders.append((when, str(data["agency"])))
            elif kind == "transferred":
                life.holders.append((when, str(data["to_agency"])))
            if kind in _CLOSING_KINDS:
                life.closed_at = when
            if plan is not None:
                if kind != "submitted":
                    state = _next_state(workflow, state, kind, data)
                life.states.append((when, state))

        def later(when: datetime, lo_h: float, hi_h: float) -> datetime:
            seconds = int(rng.uniform(lo_h, hi_h) * HOUR)
            return cal.add_working_seconds(cal.clock_start(when), seconds)

        days = float(version.deadline.working_days)
        full_online = channel == 2 and rng.random() < shares.full_online_given_online
        emit(
            "submitted",
            None,
            t,
            procedure=version.code,
            agency=receiving,
            channel=channel,
            full_online=full_online,
            applicant=self._applicant(version),
            vneid_authenticated=rng.random() < shares.vneid,
            digitised=rng.random() < shares.digitised,
        )
        submitted, submitted_on = t, t.date()
        t = later(t, 0.1, 4)
        if rng.random() < shares.refused:
            emit("reception-refused", rcv, t, agency=receiving, reason="Không thuộc thẩm quyền")
            return life
        emit("received", rcv, t, agency=receiving, officer="CB-01")
        due = cal.due_at(t, days)
        if rng.random() < shares.withdrawal:
            emit("withdrawal-requested", None, later(t, 1, 16), reason="Người nộp rút hồ sơ")
            return life
        t = later(t, 0.5, 8)
        emit("processing-started", rcv, t, agency=receiving)
        holder, level = receiving, rcv
        budget_hours = days * 8
        late_share = shares.overdue * performance(upper_agency or receiving)
        if (submitted_on - version.effective_from).days < shares.new_version_days:
            late_share *= shares.new_version_overdue_factor
        overdue = rng.random() < min(0.9, late_share)
        if rng.random() < shares.supplementation:
            t = later(t, 1, min(8, budget_hours / 4 + 1))
            emit("supplement-requested", level, t, agency=holder, reason="Thiếu giấy tờ")
            paused_at = t
            if rng.random() < shares.abandoned_supplementation:
                return life
            t = later(t, 4, 40)
            emit("supplement-provided", None, t, documents=["ban-sao.pdf"])
            if version.deadline.supplementation == "restart":
                due = cal.due_at(t, days)  # Decree 61/2018 art. 19.4, as the engine does
            else:
                paused = cal.working_seconds_between(cal.clock_start(paused_at), cal.clock_start(t))
                due = cal.add_working_seconds(due, max(0, paused))
        if upper is not None and upper_agency is not None:
            t = later(t, 1, max(1.5, budget_hours * 0.15))
            holder = upper_agency
            emit("transferred", rcv, t, agency=receiving, to_level=upper, to_agency=holder)
            level = upper
        if rng.random() < shares.stopped:
            emit("stopped", level, later(t, 1, 8), agency=holder, reason="Dừng theo đề nghị")
            return life
        if rng.random() < shares.reschedule:
            t = later(t, 0.5, 4)
            new_due = cal.add_working_seconds(due, 5 * 8 * HOUR)
            emit(
                "rescheduled",
                level,
                t,
                agency=holder,
                reason="Cần xác minh",
                new_due=new_due.isoformat(),
            )
            due = new_due
        if version.fees:
            t = later(t, 0.5, max(1.0, budget_hours * 0.2))
            requested = {f.code: f.amount for f in version.fees.values()}
            fees = [{"code": c, "amount": a} for c, a in requested.items()]
            emit("payment-requested", level, t, agency=holder, fees=fees)
            t = later(t, 0.5, 16)
            paid = payable_amount(
                version, requested, channel=channel, full_online=full_online, submitted_at=submitted
            )
            # Kept for the hostile payer, who must get it wrong (contract 1.1, "Money").
            self._payments[code] = (sum(requested.values()), paid)
            emit("payment-completed", None, t, amount=paid, online=channel == 2)
        # Resolve within or past the appointment, leaving time to return the result.
        left = max(0.5, cal.working_seconds_between(t, due) / HOUR)
        t = later(t, left * 1.05, left * 1.6) if overdue else later(t, 0.1, max(0.2, left * 0.7))
        outcome = "rejected" if rng.random() < shares.rejected_outcome else "approved"
        emit("resolved", level, t, agency=holder, outcome=outcome)
        if upper is not None:
            t = later(t, 0.2, 4)
            emit("transferred", upper, t, agency=holder, to_level=rcv, to_agency=receiving)
        emit("result-returned", rcv, later(t, 0.2, 8), agency=receiving)
        return life

    # -----------------------------------------------------------------------------------------
    def _reorder(self, stream: list[SimulatedMessage]) -> list[SimulatedMessage]:
        """Deliver some actions late, after the dossier's next action on another topic (Kafka
        keeps no order across topics).

        The late one moves forward to just after its successor, never the successor back:
        an input from the future would drag the engine's business clock days ahead.
        """
        if self.reorder_share <= 0:
            return stream
        last_index: dict[str, int] = {}
        delayed: dict[int, int] = {}  # index -> the index delivered right after it
        moved: set[int] = set()
        for i, message in enumerate(stream):
            code = message.dossier
            if code is None:
                continue
            j = last_index.get(code)
            last_index[code] = i
            if (
                j is not None
                and j not in moved
                and j not in delayed
                and stream[j].topic != message.topic
                # Only where the engine must park the early one: an action that could apply in
                # the earlier state (a withdrawal, a resolution before the payment) would win
                # the race for real and make the other one invalid.
                and _type_of(stream[j]) in _PARKING_PREDECESSORS
                and not _ends_dossier(message)
                # Never past a cutover: the engine would hand an ended agency's dossier over by
                # its partition's clock first, and refuse the ended agency's late input.
                and not self._crosses_cutover(stream[j].time, message.time)
                and self.rng.random() < self.reorder_share
            ):
                delayed[i] = j
                self._early.add(message.value)
                moved.add(j)
        result: list[SimulatedMessage] = []
        for i, message in enumerate(stream):
            if i in moved:
                continue
            result.append(message)
            if i in delayed:
                result.append(stream[delayed[i]])
        return result

    def _crosses_cutover(self, earlier: datetime, later: datetime) -> bool:
        return any(earlier < cutover <= later for cutover in self._cutovers)

    def _add_duplicates(self, stream: list[SimulatedMessage]) -> list[SimulatedMessage]:
        if self.duplicate_share <= 0:
            return stream
        result: list[SimulatedMessage] = []
        for message in stream:
            result.append(message)
            if self.rng.random() < self.duplicate_share:
                result.append(
                    SimulatedMessage(
                        message.topic,
                        message.key,
                        message.value,
                        DUPLICATE,
                        message.time,
                        message.dossier,
                    )
                )
        return result

    def _add_bad_inputs(self, stream: list[SimulatedMessage]) -> list[SimulatedMessage]:
        if self.bad_share <= 0:
            return stream
        result: list[SimulatedMessage] = []
        for message in stream:
            bad = self._bad_like(message) if self.rng.random() < self.bad_share else None
            if bad is not None and bad.expected == "unauthenticated":
                # Before its model, on the same partition: the dossier is still in the state
                # where the real agency's action fires, so only the agency is wrong.
                result.append(bad)
                result.append(message)
                continue
            result.append(message)
            if bad is not None:
                result.append(bad)
        return result

    def _bad_like(self, model: SimulatedMessage) -> SimulatedMessage:
        kind = self.rng.choice(
            [
                "not-utf8",
                "not-json",
                "not-cloudevent",
                "unknown-type",
                "schema",
                "unknown-procedure",
            ]
        )
        key, topic, time = model.key, model.topic, model.time
        if model.expected == VALID and self.rng.random() < 0.25:
            special = self._forged(model)
            if special is not None:
                return special
        if kind == "not-utf8":
            return SimulatedMessage(topic, key, b"\xff\xfe\x00bad", "malformed", time)
        if kind == "not-json":
            return SimulatedMessage(topic, key, b"{not json", "malformed", time)
        if kind == "not-cloudevent":
            return SimulatedMessage(topic, key, b'{"hello": "world"}', "malformed", time)
        event = json.loads(model.value)
        self._ids += 1
        event["id"] = f"sim-{self.seed}-bad-{self._ids:09d}"
        if kind == "unknown-type":
            event["type"] = "vn.gov.dossier.teleported"
            return SimulatedMessage(topic, key, _dump(event), "schema", time)
        if kind == "schema":
            event["time"] = "yesterday"
            return SimulatedMessage(topic, key, _dump(event), "schema", time)
        # An unknown procedure, submitted by the portal to a registered agency in force (the one
        # that received the model's dossier, or a commune) under a dossier code of its own:
        # serials from 9000 on, which no agency reaches in a day, so it never collides.
        agency = (model.dossier or "").split("-", 1)[0]
        if self.agencies.level(agency) is None or not self.agencies.acts_on(
            agency, time.astimezone(VN_TZ).date()
        ):
            agency = self.agencies.communes[0]
        code = f"{agency}-{time.strftime('%y%m%d')}-9{self._ids % 1000:03d}"
        submitted = {
            "specversion": "1.0",
            "id": event["id"],
            "source": PORTAL,
            "type": "vn.gov.dossier.submitted",
            "subject": code,
            "time": time.isoformat(),
            "datacontenttype": "application/json",
            "data": {
                "procedure": "0.000000",
                "agency": agency,
                "channel": 2,
                "full_online": False,
                "applicant": {"kind": "citizen", "id_number": "001099012345", "name": "X"},
                "vneid_authenticated": False,
                "digitised": False,
            },
        }
        return SimulatedMessage(
            SUBMISSION_TOPIC, code.encode(), _dump(submitted), "unknown-procedure", time, code
        )

    def _forged(self, model: SimulatedMessage) -> SimulatedMessage | None:
        """A conflict (a submission re-sent with the same id but other content) or an agency
        acting on a dossier it does not hold; None when the model allows neither."""
        event = json.loads(model.value)
        kind = str(event["type"]).removeprefix("vn.gov.dossier.")
        if kind == "submitted":
            event["data"]["channel"] = 1 if event["data"]["channel"] != 1 else 2
            return SimulatedMessage(
                model.topic, model.key, _dump(event), "conflict", model.time, model.dossier
            )
        if kind == "processing-started":
            holder = str(event["data"]["agency"])
            level = model.topic.removeprefix("dossier.")
            others = [a for a in self.agencies.of_level(level) if a != holder]
            if not others:
                return None
            intruder = self.rng.choice(others)
            self._ids += 1
            event["id"] = f"sim-{self.seed}-bad-{self._ids:09d}"
            event["source"] = f"urn:vn:agency:{intruder}"
            event["data"]["agency"] = intruder
            return SimulatedMessage(
                model.topic, model.key, _dump(event), "unauthenticated", model.time, model.dossier
            )
        return None

    # --- hostile senders (contract 1.1, "Rules") --------------------------------------------------
    def _add_hostile_inputs(self, stream: list[SimulatedMessage]) -> list[SimulatedMessage]:
        """Inputs of careless or hostile systems, each next to the honest one it imitates.

        They draw from a random stream of their own, so turning them on or off leaves every
        other input as it was, byte for byte.
        """
        kinds = [k for k in HOSTILE_KINDS if self.hostile.share(k) > 0]
        if not kinds:
            return stream
        rng = random.Random(f"{self.seed}:hostile")
        codes = list(
            dict.fromkeys(
                m.dossier for m in stream if m.dossier is not None and m.expected == VALID
            )
        )
        result: list[SimulatedMessage] = []
        for message in stream:
            if message.expected != VALID:
                result.append(message)
                continue
            type_ = _type_of(message)
            before: list[SimulatedMessage] = []
            after: list[SimulatedMessage] = []
            for kind in kinds:
                if not self._can_imitate(kind, message, type_):
                    continue
                if rng.random() >= self.hostile.share(kind):
                    continue
                made = self._hostile_like(kind, message, type_, rng, codes)
                # A wrong payment comes first, as a payer's mistake corrected by the right one:
                # after the right one the dossier waits for no payment, and a wrong one then
                # would stay parked until it expired.
                (before if kind == "wrong-payment" else after).append(made)
            result.extend(before)
            result.append(message)
            result.extend(after)
        return result

    def _can_imitate(self, kind: str, model: SimulatedMessage, type_: str) -> bool:
        if kind == "poison-string":
            return type_ == "submitted"
        if kind == "oversized-string":
            return type_ in _FREE_TEXT
        if kind == "forged-fee":
            return type_ == "submitted" and self._fixed_fee(model) is not None
        if kind == "wrong-payment":
            return type_ == "payment-completed" and model.dossier in self._payments
        if kind == "conflicting-copy":
            return model.value in self._early
        return True

    def _fixed_fee(self, model: SimulatedMessage) -> Fee | None:
        """A fee of the submitted procedure that the catalogue fixes (an input may not set it)."""
        event = json.loads(model.value)
        version = self.catalogue.in_force(str(event["data"]["procedure"]), model.time)
        if version is None:
            return None
        return next((f for f in version.fees.values() if not f.variable), None)

    def _hostile_like(
        self,
        kind: str,
        model: SimulatedMessage,
        type_: str,
        rng: random.Random,
        codes: Sequence[str],
    ) -> SimulatedMessage:
        event = json.loads(model.value)
        data = event["data"]
        key, dossier = model.key, None  # refused before any dossier is looked at
        if kind != "conflicting-copy":
            self._ids += 1
            event["id"] = f"sim-{self.seed}-bad-{self._ids:09d}"
        value: bytes | None = None
        if kind == "poison-string":
            # A stray low half, or an emoji cut in two by a UTF-16 truncation.
            escape = rng.choice(("\\udc00", "\\ud83d"))
            data["applicant"]["name"] += _MARK
            value = _dump(event).replace(_MARK.encode(), escape.encode())
        elif kind == "duplicate-key":
            if rng.random() < 0.5:
                # A second subject naming another dossier: which one counts is up to the parser.
                other = self._other_code(model, rng, codes)
                value = _with_extra_member(event, event, "subject", other)
            else:
                # A careless serialiser writing a member twice, even with the same value.
                name, same = next(iter(data.items()))
                value = _with_extra_member(event, data, name, same)
        elif kind == "wrong-key":
            variant = rng.choice(("other-dossier", "sender", "none"))
            if variant == "other-dossier":
                key = self._other_code(model, rng, codes).encode()
            elif variant == "sender":  # keyed by who sends rather than by what it is about
                key = str(data.get("agency") or event["source"]).encode()
            else:
                key = None
        elif kind == "implausible-time":
            at = datetime.fromisoformat(event["time"])
            variant = rng.choice(("year-9999", "century-ahead", "before-2000"))
            if variant == "year-9999":
                at = _with_year(at, 9999)
            elif variant == "century-ahead":
                at = _with_year(at, at.year + 100)
            else:  # a clock that was never set
                at = datetime(1970, 1, 1, 7, tzinfo=VN_TZ)
            event["time"] = at.isoformat()
        elif kind == "oversized-string":
            data[_FREE_TEXT[type_]] = OVERSIZED_TEXT
        elif kind == "forged-fee":
            # A dossier of its own, never created, so no later input of it is left waiting.
            fee = self._fixed_fee(model)
            assert fee is not None
            code = self._dossier_code(str(data["agency"]), model.time)
            event["subject"], key, dossier = code, code.encode(), code
            amounts = [a for a in (0, fee.amount // 2, fee.amount + 50_000) if a != fee.amount]
            data["fees"] = [{"code": fee.code, "amount": rng.choice(amounts)}]
        elif kind == "wrong-payment":
            assert model.dossier is not None
            requested, payable = self._payments[model.dossier]
            # The fee without its discount, half of it, or a round sum too many.
            amounts = [a for a in (requested, payable // 2, payable + 1000) if a != payable]
            data["amount"] = rng.choice(amounts)
            dossier = model.dossier
        else:  # conflicting-copy: same source and id as the model, other content
            if rng.random() < 0.5:
                # A sender that stamps a re-send with the time it re-sends.
                at = datetime.fromisoformat(event["time"])
                event["time"] = (at + timedelta(minutes=rng.randint(1, 59))).isoformat()
            else:
                _edit(data)  # a correction sent under the old id
            dossier = model.dossier
        if value is None:
            value = _dump(event)
        reason = HOSTILE_REASONS[kind]
        return SimulatedMessage(model.topic, key, value, reason, model.time, dossier, kind)

    def _other_code(self, model: SimulatedMessage, rng: random.Random, codes: Sequence[str]) -> str:
        if not codes:
            return "000.00.00.H56-000101-0001"
        i = rng.randrange(len(codes))
        if codes[i] == model.dossier:
            i = (i + 1) % len(codes)
        if codes[i] == model.dossier:  # the only dossier there is
            return f"{codes[i][:-4]}9999"
        return codes[i]


def payable_amount(
    version: ProcedureVersion,
    fees: Mapping[str, int],
    *,
    channel: int,
    full_online: bool,
    submitted_at: datetime,
) -> int:
    """What the applicant owes for `fees` (fee code -> amount requested), as the engine counts
    it: each fee less the discount of the first of the version's rules for it that applies to
    the dossier's channel and submission day (engine.decider._grant_discounts)."""
    submitted_on = submitted_at.astimezone(VN_TZ).date()
    total = 0
    for code, base in fees.items():
        rule = next(
            (
                r
                for r in version.discounts
                if r.fee_code == code
                and r.applies(channel=channel, full_online=full_online, submitted_on=submitted_on)
            ),
            None,
        )
        # The engine grants no discount that would raise the amount or leave it as it is.
        total += min(base, rule.payable(base)) if rule is not None and base > 0 else base
    return total


# Where an input carries free text an oversized-string sender fills: type -> data field.
_FREE_TEXT: Mapping[str, str] = {
    "received": "officer",
    "reception-refused": "reason",
    "supplement-requested": "reason",
    "withdrawal-requested": "reason",
    "stopped": "reason",
    "rescheduled": "reason",
    "resolved": "reason",
}
OVERSIZED_TEXT = ("Hồ sơ còn thiếu bản sao giấy tờ theo quy định; " * 2200)[:OVERSIZED_CHARS]
# A private-use character the simulator never writes otherwise: a place in an event's JSON to
# put what json.dumps cannot write.
_MARK = "\ue000"


def _with_extra_member(
    event: dict[str, Any], target: dict[str, Any], name: str, value: Any
) -> bytes:
    """The event's JSON with one more member `name` at the end of `target` (an object inside
    `event`), so that the object names it twice."""
    target[_MARK] = None
    try:
        raw = _dump(event)
    finally:
        del target[_MARK]
    member = json.dumps(name, ensure_ascii=False) + ":" + json.dumps(value, ensure_ascii=False)
    return raw.replace(f'"{_MARK}":null'.encode(), member.encode())


def _with_year(moment: datetime, year: int) -> datetime:
    try:
        return moment.replace(year=year)
    except ValueError:  # 29 February in a common year
        return moment.replace(year=year, day=28)


def _next_state(version: ProcedureVersion, state: str, kind: str, data: Mapping[str, Any]) -> str:
    """The state an input the workload plays takes a dossier to, by its workflow's first
    transition of that kind from `state` whose data conditions hold (the workload plays only
    inputs that fire one)."""
    for transition in version.transitions:
        if (
            transition.event == kind
            and state in transition.sources
            and all(str(data.get(k)) == v for k, v in transition.when.items())
        ):
            return transition.dest or state
    return state


def _edit(data: dict[str, Any]) -> None:
    """Change what an input says, the way a correction re-sent under the same id would."""
    if "officer" in data:
        data["officer"] = f"{data['officer']}-2"
    elif "reason" in data:
        data["reason"] = f"{data['reason']} (sửa)"
    elif "documents" in data:
        data["documents"] = [*data["documents"], "bo-sung.pdf"]
    elif "online" in data:
        data["online"] = not data["online"]
    else:
        data["note"] = "gửi lại"


# Actions whose successor on another topic cannot apply before them: swapping the two makes the
# engine park the successor until they arrive.
_PARKING_PREDECESSORS = frozenset({"submitted", "supplement-requested", "payment-requested"})
_TYPE_MARK = b'"type":"vn.gov.dossier.'


def _type_of(message: SimulatedMessage) -> str:
    """The short inbound type of a message this module wrote ("" if it has none)."""
    at = message.value.find(_TYPE_MARK)
    if at < 0:
        return ""
    start = at + len(_TYPE_MARK)
    return message.value[start : message.value.find(b'"', start)].decode("utf-8", "replace")


_ENDING_TYPES = (
    b'dossier.withdrawal-requested"',
    b'dossier.stopped"',
    b'dossier.reception-refused"',
)


def _ends_dossier(message: SimulatedMessage) -> bool:
    return any(marker in message.value for marker in _ENDING_TYPES)


def _principal(message: SimulatedMessage) -> str | None:
    """Who signs a message: the agency a level topic's input names, a submission's source."""
    try:
        event = json.loads(message.value)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    if message.topic == SUBMISSION_TOPIC:
        source = event.get("source")
        return source if isinstance(source, str) else None
    data = event.get("data")
    agency = data.get("agency") if isinstance(data, dict) else None
    return agency if isinstance(agency, str) else None


def _dump(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _accumulate(weights: Sequence[float]) -> Iterator[float]:
    total = 0.0
    for weight in weights:
        total += weight
        yield total


def _bisect(cumulative: Sequence[float], value: float) -> int:
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cumulative[mid] <= value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def iter_chunks(
    messages: Sequence[SimulatedMessage], size: int
) -> Iterator[Sequence[SimulatedMessage]]:
    for i in range(0, len(messages), size):
        yield messages[i : i + size]


# ---------------------------------------------------------------------------------------------
# What was produced
# ---------------------------------------------------------------------------------------------


def manifest(
    messages: Sequence[SimulatedMessage],
    *,
    handovers: Mapping[str, int] | None = None,
    stranded: Mapping[str, int] | None = None,
    migrations: Mapping[str, int] | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """Counts by topic and expected outcome, plus `meta`: what the engine must account for.

    `handovers`: the dossiers the engine must hand over, by former → new level
    (`Workload.expected_handovers`); each is a history entry of the engine's own beside the
    applied inputs'. `stranded`: dossiers whose life stopped at a transfer to an ended agency
    (`Workload.stranded_dossiers`), left open where they are. `migrations`: the dossiers the
    engine must move to another workflow version by a plan, by the versions' levels
    (`Workload.expected_migrations`), each a history entry of the engine's own too."""
    by_topic: dict[str, Counter[str]] = {}
    for message in messages:
        by_topic.setdefault(message.topic, Counter())[message.expected] += 1
    expected: Counter[str] = Counter()
    for counts in by_topic.values():
        expected.update(counts)
    dossiers = sum(
        1
        for m in messages
        if m.expected == VALID and m.topic == SUBMISSION_TOPIC and b'dossier.submitted"' in m.value
    )
    # Each hostile input's digest, so that its dead letter can be told from the others with the
    # same reason: a kind refused for another reason must not hide behind another kind's count.
    hostile: dict[str, dict[str, Any]] = {}
    for m in messages:
        if m.hostile is not None:
            entry = hostile.setdefault(m.hostile, {"reason": m.expected, "count": 0, "sha256": []})
            entry["count"] += 1
            entry["sha256"].append(value_digest(m.value))
    return {
        **meta,
        "messages": len(messages),
        "dossiers": dossiers,
        "expected": dict(sorted(expected.items())),
        "by_topic": {topic: dict(sorted(c.items())) for topic, c in sorted(by_topic.items())},
        "hostile": {kind: hostile[kind] for kind in HOSTILE_KINDS if kind in hostile},
        "handovers": dict(sorted((handovers or {}).items())),
        "stranded": dict(sorted((stranded or {}).items())),
        "migrations": dict(sorted((migrations or {}).items())),
    }


def value_digest(value: bytes) -> str:
    """How the manifest names an input: the SHA-256 of its bytes, as a dead letter carries them."""
    return hashlib.sha256(value).hexdigest()


def encode_jsonl(messages: Sequence[SimulatedMessage]) -> Iterator[bytes]:
    """One JSON line per message, binary-safe (values in base64): for files and comparisons."""
    for m in messages:
        line: dict[str, Any] = {
            "topic": m.topic,
            "key": None if m.key is None else m.key.decode("utf-8", "replace"),
            "expected": m.expected,
            "time": m.time.isoformat(),
            "value_base64": base64.b64encode(m.value).decode("ascii"),
        }
        if m.hostile is not None:
            line["hostile"] = m.hostile
        if m.headers:
            line["headers"] = [[k, base64.b64encode(v).decode("ascii")] for k, v in m.headers]
        yield json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def expected_outcomes(messages: Sequence[SimulatedMessage]) -> Mapping[str, int]:
    return Counter(m.expected for m in messages)
