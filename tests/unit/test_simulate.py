"""`dossier simulate` and the workload it plays: same seed, same bytes; a province's shape."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from datetime import datetime, time
from pathlib import Path

import pytest

from dossier.cli import main
from dossier.simulation import (
    ProvinceProfile,
    SimulatedMessage,
    Workload,
    encode_jsonl,
    manifest,
)
from engine.calendar import VN_TZ, WorkingCalendar
from engine.procedures import Catalogue, load_catalogue

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


def test_usage_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x.jsonl")
    assert main(["simulate", "--from", "2025-07-10", "--to", "2025-07-01", "--write", out]) == 2
    assert "is before --from" in capsys.readouterr().err
    assert main(["simulate", "--bad-share", "1.5", "--write", out]) == 2
    assert "--bad-share must be in [0, 1)" in capsys.readouterr().err
