"""`dossier simulate` and the workload it plays: same seed, same bytes; a province's shape."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from datetime import datetime, time
from pathlib import Path
from typing import Any

import pytest

from dossier.cli import main
from dossier.tools.simulation import (
    HOSTILE_KINDS,
    HOSTILE_REASONS,
    OVERSIZED_CHARS,
    Hostile,
    ProvinceProfile,
    SimulatedMessage,
    Workload,
    encode_jsonl,
    manifest,
    value_digest,
)
from engine.calendar import VN_TZ, WorkingCalendar
from engine.decider import Decider
from engine.dossier import Applied, Dossier
from engine.procedures import Catalogue, MigrationPlan, load_catalogue
from engine.registry import default_registry_file, load_registry
from schemas.codec import DEFAULT_MAX_MESSAGE_BYTES, ContractCodec, load_schema

START = datetime(2025, 6, 23, tzinfo=VN_TZ)
END = datetime(2025, 7, 8, tzinfo=VN_TZ)
CUTOVER = datetime(2025, 7, 1, tzinfo=VN_TZ)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture(scope="module")
def profile() -> ProvinceProfile:
    return ProvinceProfile.load()


def workload(
    catalogue: Catalogue, profile: ProvinceProfile | None, seed: int = 7, **options: object
) -> list[SimulatedMessage]:
    defaults: dict[str, object] = {
        "duplicate_share": 0.02,
        "bad_share": 0.02,
        "reorder_share": 0.05,
        "until": END,
    }
    return Workload(
        catalogue,
        WorkingCalendar.load(),
        seed=seed,
        start=START,
        end=END,
        dossiers=600,
        profile=profile,
        **(defaults | options),  # type: ignore[arg-type]
    ).messages()


def stream_bytes(messages: list[SimulatedMessage]) -> bytes:
    return b"".join(encode_jsonl(messages))


def kind(message: SimulatedMessage) -> str:
    return str(json.loads(message.value)["type"]).removeprefix("vn.gov.dossier.")


def test_same_seed_same_bytes_other_seed_other_bytes(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    first = stream_bytes(workload(catalogue, profile))
    assert first == stream_bytes(workload(catalogue, profile))
    assert first != stream_bytes(workload(catalogue, profile, seed=8))


def test_the_command_writes_the_same_file_for_the_same_seed(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        target = tmp_path / f"{name}.jsonl"
        args = ["simulate", "--seed", "11", "--dossiers", "150", "--write", str(target)]
        assert main([*args, "--from", "2025-06-25", "--to", "2025-07-04"]) == 0
        runs.append(target.read_bytes())
        written = json.loads((tmp_path / f"{name}.jsonl.manifest.json").read_text())
        assert written["messages"] == len(target.read_bytes().splitlines())
        assert written["seed"] == 11 and written["from"] == "2025-06-25"
    assert runs[0] == runs[1]


def test_every_message_is_labelled_and_the_manifest_counts_them(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    messages = workload(catalogue, profile)
    labels = Counter(m.expected for m in messages)
    assert set(labels) <= {
        "valid",
        "duplicate",
        "malformed",
        "schema",
        "unknown-procedure",
        "conflict",
        "unauthenticated",
    }
    assert labels["valid"] > 2000 and labels["duplicate"] > 0
    content = manifest(messages, seed=7)
    assert content["messages"] == len(messages) == sum(content["expected"].values())
    assert content["expected"] == dict(sorted(labels.items()))
    assert content["dossiers"] == sum(
        1 for m in messages if m.expected == "valid" and kind(m) == "submitted"
    )
    per_topic = Counter[str]()
    for counts in content["by_topic"].values():
        per_topic.update(counts)
    assert per_topic == labels


def test_without_a_profile_the_old_defaults_still_work(catalogue: Catalogue) -> None:
    messages = Workload(
        catalogue,
        WorkingCalendar.load(),
        seed=1,
        start=START,
        end=END,
        dossiers=50,
        procedures=["1.001193", "1.004222", "DD.GCN.LD"],
    ).messages()
    assert {m.expected for m in messages} == {"valid"}
    procedures = {
        json.loads(m.value)["data"]["procedure"] for m in messages if kind(m) == "submitted"
    }
    assert procedures <= {"1.001193", "1.004222", "DD.GCN.LD"}


def test_counters_open_in_office_hours_the_portal_never_closes(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    calendar = WorkingCalendar.load()
    channels: Counter[int] = Counter()
    for message in workload(catalogue, profile, bad_share=0.0, duplicate_share=0.0):
        if kind(message) != "submitted":
            continue
        at = message.time.astimezone(VN_TZ)
        assert START <= at < END
        channel = json.loads(message.value)["data"]["channel"]
        channels[channel] += 1
        if channel != 2:  # in person or by post: a working day, within office hours
            assert calendar.is_working_day(at.date())
            assert time(7, 30) <= at.time() < time(16, 45)
    online = channels[2] / sum(channels.values())
    assert 0.6 < online < 0.75  # the seed province's 67.8%


def test_nothing_happens_after_the_end_when_the_clock_stops_there(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    cut = workload(catalogue, profile, bad_share=0.0, duplicate_share=0.0)
    assert max(m.time for m in cut) <= END
    played = workload(catalogue, profile, bad_share=0.0, duplicate_share=0.0, until=None)
    assert max(m.time for m in played) > END


def test_the_cutover_moves_new_district_work_to_other_levels(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    """From 1 July 2025 no dossier is submitted to a district; those submitted before still
    finish there (their version is pinned at submission)."""
    messages = workload(catalogue, profile, bad_share=0.0, duplicate_share=0.0)
    submitted_at = {m.dossier: m.time for m in messages if kind(m) == "submitted"}
    district = [m for m in messages if m.topic == "dossier.district"]
    assert district, "the month before the cutover has district work"
    assert all(submitted_at[m.dossier] < CUTOVER for m in district)
    after = [m for m in messages if kind(m) == "submitted" and m.time >= CUTOVER]
    assert after and all(json.loads(m.value)["data"]["agency"] for m in after)
    agencies = {a.code: a for a in profile.agencies.info.values()}
    assert all(agencies[json.loads(m.value)["data"]["agency"]].level != "district" for m in after)


def test_inter_level_dossiers_go_up_to_the_commune_s_own_district(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    messages = workload(catalogue, profile, bad_share=0.0, duplicate_share=0.0, reorder_share=0)
    parents = {a.code: a.parent for a in profile.agencies.info.values()}
    transfers = [
        json.loads(m.value)["data"]
        for m in messages
        if kind(m) == "transferred" and m.topic == "dossier.commune"
    ]
    up_to_district = [t for t in transfers if t["to_level"] == "district"]
    assert up_to_district
    assert all(parents[t["agency"]] == t["to_agency"] for t in up_to_district)


def test_late_deliveries_never_come_from_the_future(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    """Reordering delays an action past its successor; it never moves one earlier, which would
    push the engine's business clock ahead."""
    messages = workload(catalogue, profile, reorder_share=0.5, bad_share=0.0, duplicate_share=0.0)
    latest = messages[0].time
    late = 0
    for previous, message in itertools.pairwise(messages):
        if message.time < latest:
            # Out of time order only right behind the dossier's next action, which overtook it.
            assert previous.dossier == message.dossier and previous.topic != message.topic
            late += 1
        latest = max(latest, message.time)
    assert late > 0


# ---------------------------------------------------------------------------------------------
# The end of the district level (contract 1.1, "Handover")
# ---------------------------------------------------------------------------------------------

SUCCESSOR = "000.00.42.H56"  # every district's, in the shipped registry


def played(
    catalogue: Catalogue, profile: ProvinceProfile, seed: int = 7, **options: object
) -> tuple[Workload, list[SimulatedMessage]]:
    defaults: dict[str, object] = {"duplicate_share": 0.0, "bad_share": 0.0, "until": END}
    simulated = Workload(
        catalogue,
        WorkingCalendar.load(),
        seed=seed,
        start=START,
        end=END,
        dossiers=600,
        profile=profile,
        **(defaults | options),  # type: ignore[arg-type]
    )
    return simulated, simulated.messages()


def test_no_ended_agency_acts_after_its_window(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    """Nothing is said by or transferred to an agency outside its window: from 1 July 2025 the
    districts' successor speaks for them."""
    _, messages = played(catalogue, profile, reorder_share=0.1)
    agencies = profile.agencies.info
    named = 0
    for message in messages:
        data = json.loads(message.value)["data"]
        day = message.time.astimezone(VN_TZ).date()
        for field in ("agency", "to_agency"):
            if field in data:
                assert agencies[data[field]].in_force_on(day), (message.topic, data, day)
                named += 1
    assert named > 2000
    assert not [m for m in messages if m.topic == "dossier.district" and m.time >= CUTOVER]


def test_dossiers_open_at_the_cutover_continue_with_the_successor(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    """What a district would have done after 30 June its successor does, on its own level's
    topic, in its own name: the province department, or the commune the registry names for a
    dossier whose step is a commune's once migrated; and the dossiers the engine must hand over
    are counted."""
    simulated, messages = played(catalogue, profile)
    handed_over = simulated.handed_over
    communes = {
        code: info.successor_by_level["commune"]
        for code, info in profile.agencies.info.items()
        if info.level == "district"
    }
    assert handed_over and set(handed_over.values()) >= {SUCCESSOR}
    assert set(handed_over.values()) - {SUCCESSOR} <= set(communes.values())
    expected = simulated.expected_handovers()
    assert set(expected) == {"district → province", "district → commune"}
    assert sum(expected.values()) == len(handed_over)
    by_dossier: dict[str, list[SimulatedMessage]] = {}
    for message in messages:
        by_dossier.setdefault(str(message.dossier), []).append(message)
    continued = 0
    for code, life in by_dossier.items():
        after = [m for m in life if m.time >= CUTOVER and m.topic != "dossier.submission"]
        if code not in handed_over:
            continue
        # A district held it at the cutover: it received it, or it was sent up to one.
        sent_up = [
            m
            for m in life
            if kind(m) == "transferred" and json.loads(m.value)["data"]["to_level"] == "district"
        ]
        assert code.split("-")[0] in profile.agencies.districts or sent_up, code
        assert all(m.time < CUTOVER for m in sent_up)
        successor = handed_over[code]
        by_successor = [m for m in after if json.loads(m.value)["data"]["agency"] == successor]
        for message in by_successor:
            event = json.loads(message.value)
            assert message.topic == f"dossier.{profile.agencies.level(successor)}"
            assert event["source"] == f"urn:vn:agency:{successor}"
        continued += bool(by_successor)
    # Most go on with the successor; the others wait for an applicant who never comes back,
    # or their next step falls after the workload's end.
    assert continued > len(handed_over) / 2


def test_a_dossier_submitted_to_a_district_before_the_cutover_is_received_by_its_successor(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    """The issue's dossier: submitted to a district on 30 June, received after the cutover; it
    is received, processed and paid at the successor, never at the district."""
    simulated, messages = played(catalogue, profile)
    received: dict[str, SimulatedMessage] = {
        m.dossier or "": m for m in messages if kind(m) == "received"
    }
    late = [
        m
        for m in messages
        if kind(m) == "submitted"
        and json.loads(m.value)["data"]["agency"] in profile.agencies.districts
        and m.dossier in received
        and received[m.dossier].time >= CUTOVER
    ]
    assert late, "no district dossier waits over the cutover for its reception"
    takers = set()
    for submission in late:
        reception = received[str(submission.dossier)]
        successor = simulated.handed_over[str(submission.dossier)]
        district = json.loads(submission.value)["data"]["agency"]
        # The province department, or the district's commune for a procedure moved down.
        named = profile.agencies.info[district].successor_by_level["commune"]
        assert successor in (SUCCESSOR, named)
        assert reception.topic == f"dossier.{profile.agencies.level(successor)}"
        assert json.loads(reception.value)["data"]["agency"] == successor
        takers.add(profile.agencies.level(successor))
    assert takers == {"province", "commune"}


def test_the_handovers_are_the_same_for_the_same_seed(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    first, first_messages = played(catalogue, profile, reorder_share=0.1, bad_share=0.02)
    again, again_messages = played(catalogue, profile, reorder_share=0.1, bad_share=0.02)
    assert stream_bytes(first_messages) == stream_bytes(again_messages)
    assert first.handed_over == again.handed_over
    assert first.expected_handovers() == again.expected_handovers()
    assert first.stranded_dossiers() == again.stranded_dossiers()
    content = manifest(first_messages, handovers=first.expected_handovers())
    assert content["handovers"] == first.expected_handovers()


def test_late_deliveries_never_cross_the_cutover(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    """An input is never delivered after one dated past the cutover when it is dated before it:
    by then the engine may have handed its dossier over by the partition's clock, and the
    ended agency's input would be refused."""
    _, messages = played(catalogue, profile, reorder_share=0.9)
    latest = messages[0].time
    for message in messages:
        if message.time < latest:
            assert not message.time < CUTOVER <= latest, message
        latest = max(latest, message.time)


# ---------------------------------------------------------------------------------------------
# Workflow migrations (issue #19, part 2): DD.GCN.LD v1 (commune -> district) to v2 (commune ->
# province) from 2025-07-01, workflows/migrations/reference.yaml
# ---------------------------------------------------------------------------------------------

GCN = "DD.GCN.LD"
GCN_MIGRATION = "commune/district → commune/province"


def land_certificates(
    catalogue: Catalogue, profile: ProvinceProfile, **options: object
) -> tuple[Workload, list[SimulatedMessage]]:
    """Only DD.GCN.LD, from three weeks before the cutover to three weeks after, played to the
    end: many v1 dossiers open on 1 July, at the commune and at the district."""
    defaults: dict[str, object] = {
        "seed": 19,
        "start": datetime(2025, 6, 9, tzinfo=VN_TZ),
        "end": datetime(2025, 7, 1, tzinfo=VN_TZ),
        "dossiers": 300,
        "profile": profile,
        "procedures": [GCN],
    }
    simulated = Workload(catalogue, WorkingCalendar.load(), **(defaults | options))  # type: ignore[arg-type]
    return simulated, simulated.messages()


def by_dossier(messages: list[SimulatedMessage]) -> dict[str, list[SimulatedMessage]]:
    lives: dict[str, list[SimulatedMessage]] = {}
    for message in messages:
        lives.setdefault(str(message.dossier), []).append(message)
    return lives


def decided(catalogue: Catalogue, messages: list[SimulatedMessage]) -> tuple[Counter[str], int]:
    """The messages decided in order by the engine's decider with the shipped registry, its
    own steps (migrations, then handovers) taken just before each input that makes them due
    and, at the end, by a clock past every cutover: the steps by type, and the inputs applied.
    Each input must apply."""
    registry = load_registry([default_registry_file()])
    decider = Decider(catalogue, WorkingCalendar.load(), registry)
    codec = ContractCodec()
    dossiers: dict[str, Dossier] = {}
    steps: Counter[str] = Counter()

    def take_steps(code: str, at: datetime | None, clock: datetime | None) -> None:
        dossier = dossiers.get(code)
        step = decider.step_due(dossier, at, clock)
        while dossier is not None and step is not None:
            entry = decider.own_entry(step, dossier, "urn:test:engine")
            dossier = dossiers[code] = decider.take_step(dossier, entry).dossier
            steps[entry.type.removeprefix("vn.gov.dossier.")] += 1
            step = decider.step_due(dossier, at, clock)

    for message in messages:
        event = codec.decode(message.value, message.topic, key=message.key)
        take_steps(event.subject, event.time, None)
        decision = decider.apply(dossiers.get(event.subject), event)
        assert isinstance(decision, Applied), (message.topic, json.loads(message.value), decision)
        dossiers[event.subject] = decision.dossier
    horizon = messages[-1].time
    for code in list(dossiers):
        take_steps(code, None, horizon)
    return steps, len(messages)


def test_a_commune_dossier_open_at_the_cutover_goes_up_to_the_province_under_version_2(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    """A v1 dossier at the commune on 1 July is migrated to v2: the commune transfers it to the
    province (not to its ended district), the province decides on `dossier.province` and sends
    the result back to the commune, which returns it; every agency acts on its day and none of
    these dossiers is stranded."""
    simulated, messages = land_certificates(catalogue, profile)
    agencies = profile.agencies
    for message in messages:
        data = json.loads(message.value)["data"]
        day = message.time.astimezone(VN_TZ).date()
        for field in ("agency", "to_agency"):
            if field in data:
                assert agencies.acts_on(data[field], day), (message.topic, data, day)
    went_up = 0
    for code, life in by_dossier(messages).items():
        up = [m for m in life if kind(m) == "transferred" and m.topic == "dossier.commune"]
        if not up or up[0].time < CUTOVER:
            continue
        went_up += 1
        transfer = json.loads(up[0].value)["data"]
        province = transfer["to_agency"]
        assert transfer["to_level"] == "province", transfer
        assert agencies.level(province) == "province"
        assert simulated.migrated[code] == 2
        later = [m for m in life if m.time > up[0].time and m.topic != "dossier.submission"]
        upper = [m for m in later if m.topic == "dossier.province"]
        assert upper and {json.loads(m.value)["data"]["agency"] for m in upper} == {province}
        back = [m for m in upper if kind(m) == "transferred"]
        returned = [m for m in later if kind(m) == "result-returned"]
        if back:
            receiving = json.loads(life[0].value)["data"]["agency"]
            assert json.loads(back[0].value)["data"]["to_level"] == "commune"
            assert json.loads(back[0].value)["data"]["to_agency"] == receiving
            assert [m.topic for m in returned] == ["dossier.commune"]
    assert went_up > 5
    assert simulated.stranded_dossiers() == {}
    # The engine's decider agrees: each input applies, each migration and handover expected is
    # made, none that is not.
    steps, _ = decided(catalogue, messages)
    assert steps["workflow-migrated"] == len(simulated.migrated) > went_up
    assert simulated.expected_migrations() == {GCN_MIGRATION: len(simulated.migrated)}
    assert steps["handed-over"] == sum(simulated.expected_handovers().values()) > 0


def test_each_dossier_open_at_the_cutover_is_migrated_once_and_one_closed_before_it_never(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    simulated, messages = land_certificates(catalogue, profile)
    lives = by_dossier(messages)
    closing = {"reception-refused", "withdrawal-requested", "stopped", "result-returned"}
    closed_before = {
        code
        for code, life in lives.items()
        if any(kind(m) in closing and m.time < CUTOVER for m in life)
    }
    open_at_cutover = {
        code for code, life in lives.items() if code not in closed_before and life[0].time < CUTOVER
    }
    assert closed_before and open_at_cutover
    # Those waiting for the applicant too: the engine moves them by its clock.
    assert set(simulated.migrated) == open_at_cutover
    assert sum(simulated.expected_migrations().values()) == len(open_at_cutover)
    content = manifest(messages, migrations=simulated.expected_migrations())
    assert content["migrations"] == {GCN_MIGRATION: len(open_at_cutover)}


def test_a_result_due_back_at_an_ended_district_goes_to_a_commune_of_its_area(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    """A district/province procedure whose v2 receives at the commune, with a plan of the
    importer's shape ({district: commune}, every open state kept): a v1 dossier the province
    holds on 1 July sends its result back to a commune of the former district's area, acting
    that day, which returns it on `dossier.commune`; none is stranded."""
    code = "2.007640"
    source, target = catalogue.get(code, 1), catalogue.get(code, 2)
    assert source is not None and target is not None
    assert (source.levels, target.levels) == (("district", "province"), ("commune", "province"))
    plan = MigrationPlan(
        procedure=code,
        from_version=1,
        to_version=2,
        effective=CUTOVER.date(),
        states={name: name for name, state in source.states.items() if not state.final},
        levels={"district": "commune"},
        basis="test",
        source_file="test",
    )
    planned = Catalogue(catalogue.all_versions(), [plan])
    simulated, messages = land_certificates(planned, profile, procedures=[code])
    agencies = profile.agencies
    back_at_commune = 0
    for life in by_dossier(messages).values():
        receiving = json.loads(life[0].value)["data"]["agency"]
        # The province's transfer back (a successor's transfer up is on its topic too).
        back = [
            m
            for m in life
            if kind(m) == "transferred" and json.loads(m.value)["data"]["agency"] != receiving
            and json.loads(m.value)["data"]["to_level"] != "province"
        ]  # fmt: skip
        if not back or back[0].time < CUTOVER or agencies.acts_on(receiving, CUTOVER.date()):
            continue
        data = json.loads(back[0].value)["data"]
        day = back[0].time.astimezone(VN_TZ).date()
        assert data["to_level"] == "commune"
        assert agencies.parent(data["to_agency"]) == receiving
        assert agencies.acts_on(data["to_agency"], day)
        returned = [m for m in life if kind(m) == "result-returned"]
        assert [(m.topic, json.loads(m.value)["data"]["agency"]) for m in returned] == [
            ("dossier.commune", data["to_agency"])
        ]
        back_at_commune += 1
    assert back_at_commune > 5
    assert simulated.stranded_dossiers() == {}
    assert simulated.expected_migrations() == {
        "district/province → commune/province": len(simulated.migrated)
    }


def test_without_a_plan_a_transfer_to_an_ended_district_still_strands_the_dossier(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    unplanned = Catalogue(catalogue.all_versions())
    simulated, messages = land_certificates(unplanned, profile)
    assert simulated.expected_migrations() == {}
    assert simulated.stranded_dossiers()["commune → district"] > 5
    # Only the dossiers a district held go on, with its successor; none goes up to the province.
    assert not [
        m
        for m in messages
        if kind(m) == "transferred" and json.loads(m.value)["data"]["to_level"] == "province"
    ]


def test_a_workload_before_any_cutover_is_the_same_with_or_without_plans(
    catalogue: Catalogue, profile: ProvinceProfile
) -> None:
    """A dossier with a plan whose life ends before the plan's cutover draws nothing more
    from the seed: a workload of such dossiers only (every procedure, submitted in April,
    played to the end well before 1 July) is byte for byte the one made without plans. (A life
    that crosses the cutover draws its successor agencies from the seed, even if `until` leaves
    those steps out.)"""
    options: dict[str, object] = {
        "start": datetime(2025, 4, 1, tzinfo=VN_TZ),
        "end": datetime(2025, 4, 30, tzinfo=VN_TZ),
        "procedures": None,
        "dossiers": 600,
    }
    planned, messages = land_certificates(catalogue, profile, **options)
    unplanned, again = land_certificates(Catalogue(catalogue.all_versions()), profile, **options)
    assert any(GCN in str(m.value) for m in messages)
    assert max(m.time for m in messages) < datetime(2025, 7, 1, tzinfo=VN_TZ)
    assert stream_bytes(messages) == stream_bytes(again)
    assert planned.expected_migrations() == unplanned.expected_migrations() == {}


def test_usage_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x.jsonl")
    assert main(["simulate", "--from", "2025-07-10", "--to", "2025-07-01", "--write", out]) == 2
    assert "is before --from" in capsys.readouterr().err
    assert main(["simulate", "--bad-share", "1.5", "--write", out]) == 2
    assert "--bad-share must be in [0, 1)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Hostile senders (contract 1.1, "Rules": Money, Time, Strings)
# ---------------------------------------------------------------------------------------------

# Every kind often enough to be sure of a few of each in 600 dossiers.
HOSTILE = Hostile(
    poison_string=0.05,
    duplicate_key=0.02,
    wrong_key=0.02,
    implausible_time=0.02,
    oversized_string=0.03,
    forged_fee=0.2,
    wrong_payment=0.3,
    conflicting_copy=0.5,
)


@pytest.fixture(scope="module")
def hostile_stream(catalogue: Catalogue, profile: ProvinceProfile) -> list[SimulatedMessage]:
    return workload(catalogue, profile, hostile=HOSTILE)


def of_kind(messages: list[SimulatedMessage], hostile: str) -> list[SimulatedMessage]:
    found = [m for m in messages if m.hostile == hostile]
    assert found, f"no {hostile} input made"
    return found


def strict_json(value: bytes) -> Any:
    """Parse as the contract reads JSON: a member named twice is an error."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in items]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate member in {names}")
        return dict(items)

    return json.loads(value, object_pairs_hook=pairs)


def content(event: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two events with one (source, id) the same event (engine.events)."""
    return (event["type"], event["subject"], event["time"], event["data"])


def test_every_hostile_kind_is_made_with_the_reason_the_contract_gives_it(
    hostile_stream: list[SimulatedMessage],
) -> None:
    made = Counter(m.hostile for m in hostile_stream if m.hostile is not None)
    assert set(made) == set(HOSTILE_KINDS)
    assert all(m.expected == HOSTILE_REASONS[m.hostile] for m in hostile_stream if m.hostile)
    assert HOSTILE_REASONS == {
        "poison-string": "malformed",
        "duplicate-key": "malformed",
        "wrong-key": "malformed",
        "implausible-time": "schema",
        "oversized-string": "schema",
        "forged-fee": "schema",
        "wrong-payment": "invalid-transition",
        "conflicting-copy": "conflict",
    }
    # The manifest names each one by its bytes, for the accounting line by line.
    listed = manifest(hostile_stream)["hostile"]
    assert {kind: entry["count"] for kind, entry in listed.items()} == dict(made)
    for kind, entry in listed.items():
        assert entry["reason"] == HOSTILE_REASONS[kind]
        assert sorted(entry["sha256"]) == sorted(
            value_digest(m.value) for m in hostile_stream if m.hostile == kind
        )
    assert len({value_digest(m.value) for m in hostile_stream if m.hostile}) == sum(made.values())


def test_hostile_senders_leave_every_other_input_as_it_was(
    catalogue: Catalogue, profile: ProvinceProfile, hostile_stream: list[SimulatedMessage]
) -> None:
    honest = workload(catalogue, profile)
    assert [m for m in hostile_stream if m.hostile is None] == honest
    assert stream_bytes(hostile_stream) == stream_bytes(
        workload(catalogue, profile, hostile=HOSTILE)
    )
    assert stream_bytes(hostile_stream) != stream_bytes(
        workload(catalogue, profile, seed=8, hostile=HOSTILE)
    )


def test_the_defaults_are_a_small_multiple_of_the_bad_share() -> None:
    assert Hostile.relative_to(0.0) == Hostile()
    default = Hostile.relative_to(0.005)
    assert all(0 < default.share(kind) <= 0.025 for kind in HOSTILE_KINDS)
    assert Hostile().with_share("wrong-key", 0.1).as_dict()["wrong-key"] == 0.1
    with pytest.raises(ValueError, match="unknown hostile kind"):
        Hostile().share("teleport")


def test_poison_strings_carry_a_lone_surrogate_escape_in_the_applicant_s_name(
    hostile_stream: list[SimulatedMessage],
) -> None:
    escapes: Counter[str] = Counter()
    for message in of_kind(hostile_stream, "poison-string"):
        text = message.value.decode("utf-8")  # valid UTF-8: only the JSON escape is poison
        escape = re.search(r"\\u(d[89a-f][0-9a-f]{2})", text)
        assert escape is not None, text
        escapes[escape.group(0)] += 1
        name = json.loads(message.value)["data"]["applicant"]["name"]
        assert "\ud800" <= name[-1] <= "\udfff"
        with pytest.raises(UnicodeEncodeError):
            name.encode("utf-8")
        assert message.key == json.loads(message.value)["subject"].encode()
    assert escapes["\\udc00"] > 0


def test_duplicate_keys_name_a_member_twice(hostile_stream: list[SimulatedMessage]) -> None:
    other_subjects = 0
    for message in of_kind(hostile_stream, "duplicate-key"):
        with pytest.raises(ValueError, match="duplicate member"):
            strict_json(message.value)
        if message.value.count(b'"subject":') == 2:
            subjects = re.findall(rb'"subject":"([^"]+)"', message.value)
            assert subjects[0] == message.key and subjects[1] != message.key
            other_subjects += 1
    assert other_subjects > 0


def test_wrong_keys_are_not_the_subject(hostile_stream: list[SimulatedMessage]) -> None:
    keys = of_kind(hostile_stream, "wrong-key")
    assert all(m.key != strict_json(m.value)["subject"].encode() for m in keys)
    assert any(m.key is None for m in keys)


def test_implausible_times_are_far_ahead_or_before_2000(
    hostile_stream: list[SimulatedMessage],
) -> None:
    years = {
        datetime.fromisoformat(strict_json(m.value)["time"]).year
        for m in of_kind(hostile_stream, "implausible-time")
    }
    assert 9999 in years
    assert all(year >= 2100 or year < 2000 for year in years)


def test_oversized_strings_are_beyond_the_schema_s_limit_and_within_a_message(
    hostile_stream: list[SimulatedMessage],
) -> None:
    for message in of_kind(hostile_stream, "oversized-string"):
        event = strict_json(message.value)
        kind_ = event["type"].removeprefix("vn.gov.dossier.")
        schema = load_schema(f"inbound/{kind_}.schema.json")
        field = "officer" if kind_ == "received" else "reason"
        limit = resolved(schema, schema["properties"][field]).get("maxLength")
        assert limit is not None, f"{kind_}.{field} has no maxLength"
        assert len(event["data"][field]) == OVERSIZED_CHARS > limit
        assert len(message.value) < DEFAULT_MAX_MESSAGE_BYTES


def resolved(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_forged_fees_override_a_fixed_fee_of_a_dossier_with_no_other_input(
    catalogue: Catalogue, hostile_stream: list[SimulatedMessage]
) -> None:
    for message in of_kind(hostile_stream, "forged-fee"):
        event = strict_json(message.value)
        assert event["type"] == "vn.gov.dossier.submitted"
        assert message.key == event["subject"].encode() and message.dossier == event["subject"]
        version = catalogue.in_force(event["data"]["procedure"], message.time)
        assert version is not None
        (forged,) = event["data"]["fees"]
        fee = version.fees[forged["code"]]
        assert not fee.variable and forged["amount"] != fee.amount
        # Its dossier is never created: nothing else may be waiting for it.
        assert [m for m in hostile_stream if m.dossier == message.dossier] == [message]


def dossier_events(messages: list[SimulatedMessage]) -> dict[str, dict[str, dict[str, Any]]]:
    """Each dossier's valid events by short type (the last one of a type)."""
    by_dossier: dict[str, dict[str, dict[str, Any]]] = {}
    for message in messages:
        if message.expected == "valid" and message.dossier is not None:
            event = json.loads(message.value)
            by_dossier.setdefault(message.dossier, {})[kind(message)] = event
    return by_dossier


def test_payments_are_the_fees_requested_less_the_discounts_granted(
    catalogue: Catalogue, hostile_stream: list[SimulatedMessage]
) -> None:
    discounted = 0
    for events in dossier_events(hostile_stream).values():
        if "payment-completed" not in events:
            continue
        submitted = events["submitted"]["data"]
        at = datetime.fromisoformat(events["submitted"]["time"])
        version = catalogue.in_force(submitted["procedure"], at)
        assert version is not None
        payable = 0
        for fee in events["payment-requested"]["data"]["fees"]:
            rules = [
                r
                for r in version.discounts
                if r.fee_code == fee["code"]
                and r.applies(
                    channel=submitted["channel"],
                    full_online=submitted["full_online"],
                    submitted_on=at.astimezone(VN_TZ).date(),
                )
            ]
            payable += rules[0].payable(fee["amount"]) if rules else fee["amount"]
        requested = sum(f["amount"] for f in events["payment-requested"]["data"]["fees"])
        assert events["payment-completed"]["data"]["amount"] == payable
        discounted += payable < requested
    assert discounted > 0


def test_a_wrong_payment_comes_just_before_the_right_one(
    hostile_stream: list[SimulatedMessage],
) -> None:
    for message in of_kind(hostile_stream, "wrong-payment"):
        at = hostile_stream.index(message)
        right = next(
            m
            for m in hostile_stream[at + 1 :]
            if m.dossier == message.dossier and m.expected == "valid"
        )
        assert kind(right) == "payment-completed" and right.topic == message.topic
        wrong, paid = json.loads(message.value), json.loads(right.value)
        assert wrong["id"] != paid["id"] and wrong["subject"] == paid["subject"]
        assert wrong["data"]["amount"] != paid["data"]["amount"]


def test_a_conflicting_copy_arrives_while_its_original_waits_for_its_predecessor(
    hostile_stream: list[SimulatedMessage],
) -> None:
    for copy in of_kind(hostile_stream, "conflicting-copy"):
        at = hostile_stream.index(copy)
        event = strict_json(copy.value)
        originals = [
            m
            for m in hostile_stream[:at]
            if m.expected == "valid"
            and (json.loads(m.value)["source"], json.loads(m.value)["id"])
            == (event["source"], event["id"])
        ]
        assert len(originals) == 1
        original = originals[0]
        assert (original.topic, original.key) == (copy.topic, copy.key)
        assert content(json.loads(original.value)) != content(event)
        # The original was delivered before its predecessor, which comes only after the copy:
        # the engine still has it parked when the copy arrives.
        assert any(
            m.dossier == copy.dossier
            and m.expected == "valid"
            and m.time < original.time
            and m.topic != original.topic
            for m in hostile_stream[at + 1 :]
        )


def test_the_command_takes_hostile_shares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.jsonl"
    base = ["simulate", "--dossiers", "150", "--from", "2025-06-25", "--to", "2025-07-04"]
    assert main([*base, "--bad-share", "0.05", "--write", str(out)]) == 0
    written = json.loads((tmp_path / "x.jsonl.manifest.json").read_text())
    assert written["hostile_shares"] == Hostile.relative_to(0.05).as_dict()
    assert written["hostile"] and sum(e["count"] for e in written["hostile"].values()) == sum(
        1 for line in out.read_bytes().splitlines() if b'"hostile":' in line
    )
    args = ["--hostile", "all=0", "--hostile", "wrong-key=0.2", "--write", str(out)]
    assert main([*base, *args]) == 0
    written = json.loads((tmp_path / "x.jsonl.manifest.json").read_text())
    assert set(written["hostile"]) == {"wrong-key"}
    assert written["hostile_shares"]["wrong-key"] == 0.2
    for bad in ("teleport=0.1", "wrong-key", "wrong-key=x", "all=1.5"):
        assert main([*base, "--hostile", bad, "--write", str(out)]) == 2
        assert "--hostile" in capsys.readouterr().err
