"""The registry of agencies and senders (contract 1.1): loading, validation, queries."""

from __future__ import annotations

import base64
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from engine.registry import (
    AGENCY_SOURCE_PREFIX,
    Agency,
    Registry,
    RegistryError,
    default_registry_file,
    load_registry,
    merger_registry_file,
    registry_files,
    shipped_registry_files,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

BASE = {
    "agencies": [
        {"code": "000.00.00.H56", "name": "UBND tỉnh", "level": "province"},
        {"code": "000.00.12.H56", "name": "Sở", "level": "province", "parent": "000.00.00.H56"},
        {
            "code": "000.00.31.H56",
            "name": "UBND TP Sông Công",
            "level": "district",
            "effective_to": date(2025, 6, 30),
            "successor": "000.00.12.H56",
            "successor_basis": "illustrative",
        },
        {
            "code": "000.20.22.H56",
            "name": "UBND phường Thắng Lợi",
            "level": "commune",
            "parent": "000.00.31.H56",
            "sources": ["urn:vn:agency:000.20.22.H56", "urn:vn:egov:song-cong"],
            "public_keys": [{"id": "k1", "ed25519": PUBLIC}],
        },
    ],
    "senders": [
        {
            "source": "urn:vn:portal:dichvucong.gov.vn",
            "types": ["submitted", "supplement-provided", "payment-completed"],
            "agencies": "*",
        },
        {
            "source": "urn:vn:counter:000.20.22.H56",
            "types": ["submitted"],
            "agencies": ["000.20.22.H56"],
        },
    ],
}


def write(tmp_path: Path, name: str, document: object) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


def problems_of(files: list[Path]) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        load_registry(files)
    return [str(p) for p in caught.value.problems]


def test_a_valid_file_loads_with_its_queries(tmp_path: Path) -> None:
    registry = load_registry([write(tmp_path, "r.yaml", BASE)])
    commune = registry.agency("000.20.22.H56")
    assert commune is not None and commune.level == "commune"
    assert registry.sources_of("000.20.22.H56") == (
        "urn:vn:agency:000.20.22.H56",
        "urn:vn:egov:song-cong",
    )
    # Sources default to the agency's URN.
    assert registry.sources_of("000.00.12.H56") == (f"{AGENCY_SOURCE_PREFIX}000.00.12.H56",)
    assert registry.acting_window("000.00.31.H56") == (None, date(2025, 6, 30))
    assert registry.acting_window("999.99.99.H56") is None
    assert [a.code for a in registry.in_force("district", date(2025, 7, 1))] == []
    assert registry.successor_on("000.00.31.H56", date(2025, 7, 1)).code == "000.00.12.H56"  # type: ignore[union-attr]
    assert [a.code for a in registry.agencies_with_source("urn:vn:egov:song-cong")] == [
        "000.20.22.H56"
    ]
    portal = registry.sender("urn:vn:portal:dichvucong.gov.vn")
    assert portal is not None and portal.may_send("submitted") and portal.may_submit_to("x")
    assert not portal.may_send("withdrawal-requested")
    counter = registry.sender("urn:vn:counter:000.20.22.H56")
    assert counter is not None and not counter.may_submit_to("000.00.12.H56")
    assert [a.level for a in registry.agencies()] == ["commune", "district", "province", "province"]
    assert commune.public_keys[0].id == "k1"


def test_a_later_file_adds_entries_and_replaces_those_of_the_same_code_or_source(
    tmp_path: Path,
) -> None:
    extra = {
        "agencies": [
            {"code": "000.00.12.H56", "name": "Sở (renamed)", "level": "province"},
            {"code": "000.20.23.H56", "name": "UBND phường Mỏ Chè", "level": "commune"},
        ],
        "senders": [
            {"source": "urn:vn:portal:dichvucong.gov.vn", "types": ["submitted"], "agencies": "*"}
        ],
    }
    registry = load_registry([write(tmp_path, "a.yaml", BASE), write(tmp_path, "b.yaml", extra)])
    assert registry.agency("000.00.12.H56").name == "Sở (renamed)"  # type: ignore[union-attr]
    assert registry.agency("000.00.12.H56").parent is None  # type: ignore[union-attr]
    assert registry.agency("000.20.23.H56") is not None
    assert registry.sender("urn:vn:portal:dichvucong.gov.vn").types == {"submitted"}  # type: ignore[union-attr]
    assert len(registry.agencies()) == 5


def test_registry_files_are_the_shipped_ones_then_the_setting_s_in_order() -> None:
    assert shipped_registry_files() == [default_registry_file(), merger_registry_file()]
    assert registry_files("") == shipped_registry_files()
    assert registry_files("/a.yaml:/b.yaml") == [
        default_registry_file(),
        merger_registry_file(),
        Path("/a.yaml"),
        Path("/b.yaml"),
    ]


def test_the_shipped_registry_loads() -> None:
    registry = load_registry()
    assert registry.by_level("district")
    for agency in registry.agencies():
        if agency.effective_to is not None:
            assert agency.successor is not None and agency.successor_basis
    assert registry.sender("urn:vn:portal:dichvucong.gov.vn") is not None


CUTOVER = date(2025, 7, 1)
LAST_THREE_TIER_DAY = date(2025, 6, 30)


def _bac_kan(registry: Registry) -> list[str]:
    """The former Bắc Kạn province's agencies: those of the merger file's synthetic group."""
    return [a.code for a in registry.agencies() if a.code.endswith(".H99")]


def test_every_ended_agency_has_a_successor_acting_the_day_after_following_chains() -> None:
    registry = load_registry()
    ended = [a for a in registry.agencies() if a.effective_to is not None]
    assert len(ended) >= 9 + 20
    for agency in ended:
        assert agency.effective_to is not None and agency.successor is not None
        assert agency.successor_basis is not None and agency.successor_basis.strip()
        day = agency.effective_to + timedelta(days=1)
        # The chain never cycles: following successors visits each agency at most once, and
        # ends at an agency acting on the cutover day.
        seen: list[str] = [agency.code]
        current = registry.agency(agency.successor)
        while current is not None and not current.acts_on(day):
            assert current.code not in seen, f"successor cycle {seen} -> {current.code}"
            seen.append(current.code)
            current = registry.agency(current.successor or "")
        assert current is not None, f"{agency.code}: no successor acting on {day} ({seen})"
        assert current.code not in seen
        assert registry.successor_on(agency.code, day) == current
        ending = registry.ending_of(agency.code)
        assert ending is not None and ending.successor == current
    # Every ended agency is in endings(): nobody is left without one.
    assert {e.agency.code for e in registry.endings()} == {a.code for a in ended}


def test_the_former_bac_kan_province_ends_on_2025_06_30_into_the_merged_province() -> None:
    registry = load_registry()
    bac_kan = _bac_kan(registry)
    levels = {registry.agency(c).level for c in bac_kan}  # type: ignore[union-attr]
    assert levels == {"commune", "district", "province"}
    assert len([c for c in bac_kan if registry.agency(c).level == "district"]) == 8  # type: ignore[union-attr]
    for code in bac_kan:
        agency = registry.agency(code)
        assert agency is not None
        assert agency.effective_to == LAST_THREE_TIER_DAY, code
        assert agency.acts_on(LAST_THREE_TIER_DAY) and not agency.acts_on(CUTOVER)
        assert agency.successor_basis and "illustrative" in agency.successor_basis
        # Its successor is the merged Thái Nguyên's, not another of Bắc Kạn's.
        ending = registry.ending_of(code)
        assert ending is not None and ending.successor.code.endswith(".H56"), code
        assert ending.cutover.isoformat() == "2025-07-01T00:00:00+07:00"
        # A district's open dossiers go to the department that takes the former district
        # procedures, as Thái Nguyên's own districts' do; a commune's to a merged commune.
        if agency.level == "district":
            assert ending.successor.code == "000.00.42.H56"
        assert ending.successor.level == ("province" if agency.level != "commune" else "commune")
    for day in (CUTOVER, date(2026, 1, 1)):
        for level in ("commune", "district", "province"):
            assert not [a for a in registry.in_force(level, day) if a.code in bac_kan]
    # Its portal submits only to its own agencies, so nothing after 2025-06-30.
    portal = registry.sender("urn:vn:portal:dichvucong.backan.gov.vn")
    assert portal is not None and portal.agencies == frozenset(bac_kan)


def test_the_merger_file_keeps_clear_of_the_generated_file_s_codes() -> None:
    """A later file replaces an entry of the same code silently: the hand-written merger file
    must never shadow an agency or sender of the generated one."""
    province = yaml.safe_load(default_registry_file().read_text(encoding="utf-8"))
    merger = yaml.safe_load(merger_registry_file().read_text(encoding="utf-8"))
    assert set(merger) == {"agencies", "senders"}  # nothing the simulator would read
    assert not {a["code"] for a in province["agencies"]} & {a["code"] for a in merger["agencies"]}
    assert not {s["source"] for s in province["senders"]} & {s["source"] for s in merger["senders"]}
    fixtures = yaml.safe_load(
        (Path(__file__).parents[1] / "fixtures" / "registry.yaml").read_text(encoding="utf-8")
    )
    assert not {a["code"] for a in fixtures["agencies"]} & {a["code"] for a in merger["agencies"]}


def test_a_successor_by_level_takes_the_dossiers_at_that_level(tmp_path: Path) -> None:
    document = yaml.safe_load(yaml.safe_dump(BASE))
    document["agencies"][2]["successor_by_level"] = {"commune": "000.20.22.H56"}
    registry = load_registry([write(tmp_path, "registry.yaml", document)])
    ending = registry.ending_of("000.00.31.H56")
    assert ending is not None
    assert ending.successor_for("commune").code == "000.20.22.H56"
    assert ending.successor_for("district").code == "000.00.12.H56"
    assert ending.successor_for(None).code == "000.00.12.H56"


def test_every_shipped_district_names_a_commune_acting_the_day_after() -> None:
    registry = load_registry()
    districts = [a for a in registry.agencies() if a.level == "district"]
    assert districts
    for district in districts:
        ending = registry.ending_of(district.code)
        assert ending is not None
        commune = ending.successor_for("commune")
        assert commune.level == "commune" and commune.acts_on(ending.cutover_day), district.code
        assert ending.successor_for("province").level == "province"


def test_a_successor_cycle_leaves_nobody_to_hand_over_to(tmp_path: Path) -> None:
    cycle = {
        "agencies": [
            {
                "code": "000.00.70.H56",
                "name": "A",
                "level": "district",
                "effective_to": date(2025, 6, 30),
                "successor": "000.00.71.H56",
                "successor_basis": "illustrative",
            },
            {
                "code": "000.00.71.H56",
                "name": "B",
                "level": "district",
                "effective_to": date(2025, 6, 30),
                "successor": "000.00.70.H56",
                "successor_basis": "illustrative",
            },
        ]
    }
    # The check refuses it (the successor does not act on the cutover day)...
    problems = problems_of([write(tmp_path, "cycle.yaml", cycle)])
    assert len(problems) == 2 and all("does not act on 2025-07-01" in p for p in problems)
    # ...and were it built anyway, following the chain stops.
    registry = Registry(
        Agency(
            a["code"],
            a["name"],
            a["level"],
            effective_to=a["effective_to"],
            successor=a["successor"],
        )
        for a in cycle["agencies"]
    )
    assert registry.successor_on("000.00.70.H56", CUTOVER) is None
    assert registry.endings() == ()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["agencies"][0].update(code="not a code"),
            "agencies[0].code: not an agency code",
        ),
        (lambda d: d["agencies"][0].update(name=""), "agencies[0].name: every agency has a name"),
        (lambda d: d["agencies"][0].update(level="ward"), "agencies[0].level: must be one of"),
        (lambda d: d["agencies"][0].update(colour="red"), "agencies[0].colour: unknown key"),
        (
            lambda d: d["agencies"][2].pop("successor"),
            "agencies[2].successor: required with effective_to",
        ),
        (
            lambda d: d["agencies"][2].update(successor="000.00.99.H56"),
            "agencies[2].successor: agency 000.00.99.H56 is not registered",
        ),
        (
            lambda d: d["agencies"][2].update(successor="000.00.31.H56"),
            "agencies[2].successor: an agency cannot succeed itself",
        ),
        (
            lambda d: (
                d["agencies"][1].update(effective_to=date(2025, 6, 30), successor="000.00.00.H56")
                or d["agencies"][0].update(effective_from=date(2025, 8, 1))
            ),
            "does not act on 2025-07-01, the day after 000.00.12.H56 ends",
        ),
        (
            lambda d: d["agencies"][0].update(successor="000.00.12.H56"),
            "agencies[0].successor: a successor takes over when effective_to ends the agency",
        ),
        (
            lambda d: d["agencies"][2].update(effective_from=date(2025, 7, 1)),
            "agencies[2].effective_to: 2025-06-30 is before effective_from 2025-07-01",
        ),
        (
            lambda d: d["agencies"][2].update(effective_from="first of July"),
            "agencies[2].effective_from: not a date (YYYY-MM-DD)",
        ),
        (
            lambda d: d["agencies"][1].update(parent="000.00.98.H56"),
            "agencies[1].parent: agency 000.00.98.H56 is not registered",
        ),
        (
            lambda d: d["agencies"][1].update(sources=[]),
            "agencies[1].sources: a list of one or more",
        ),
        (
            lambda d: d["agencies"][1].update(sources=["urn:a", "urn:a"]),
            "agencies[1].sources[1]: urn:a is listed twice",
        ),
        (
            lambda d: d["agencies"].append(dict(d["agencies"][0])),
            "agencies[4].code: agency 000.00.00.H56 is listed twice (also agencies[0])",
        ),
        (
            lambda d: d["agencies"][3]["public_keys"][0].update(ed25519="AAAA"),
            "agencies[3].public_keys[0].ed25519: not the base64 of a raw 32-byte Ed25519",
        ),
        (
            lambda d: d["agencies"][3]["public_keys"][0].update(id="k:1"),
            "agencies[3].public_keys[0].id: a key id, without ':'",
        ),
        (
            lambda d: d["agencies"][3]["public_keys"].append({"id": "k1", "ed25519": PUBLIC}),
            "agencies[3].public_keys[1].id: key id 'k1' is listed twice",
        ),
        (
            lambda d: d["agencies"][3]["public_keys"][0].pop("ed25519"),
            "agencies[3].public_keys[0]: a key is {id: <key id>, ed25519:",
        ),
        (
            lambda d: d["senders"][0].update(types=["resolved"]),
            "senders[0].types[0]: 'resolved' is not a type of dossier.submission",
        ),
        (lambda d: d["senders"][0].update(types=[]), "senders[0].types: a list of one or more"),
        (lambda d: d["senders"][0].update(agencies="all"), "senders[0].agencies: '*' or a list"),
        (
            lambda d: d["senders"][1].update(agencies=["000.20.99.H56"]),
            "senders[1].agencies: agency 000.20.99.H56 is not registered",
        ),
        (
            lambda d: d["senders"].append(dict(d["senders"][0])),
            "senders[2].source: sender urn:vn:portal:dichvucong.gov.vn is listed twice",
        ),
        (lambda d: d["senders"][0].pop("source"), "senders[0].source: the sender's CloudEvents"),
        (
            lambda d: d["agencies"][2].update(successor_by_level={"ward": "000.20.22.H56"}),
            "agencies[2].successor_by_level.ward: must be one of",
        ),
        (
            lambda d: d["agencies"][2].update(successor_by_level=["000.20.22.H56"]),
            "agencies[2].successor_by_level: expected a mapping",
        ),
        (
            lambda d: d["agencies"][2].update(successor_by_level={"commune": "000.20.99.H56"}),
            "agencies[2].successor_by_level.commune: agency 000.20.99.H56 is not registered",
        ),
        (
            # Its steps there are taken from its own level's topic: a province agency cannot.
            lambda d: d["agencies"][2].update(successor_by_level={"commune": "000.00.12.H56"}),
            "successor_by_level.commune: 000.00.12.H56 is a province agency, not a commune one",
        ),
        (
            lambda d: d["agencies"][2].update(successor_by_level={"district": "000.00.31.H56"}),
            "agencies[2].successor_by_level.district: an agency cannot succeed itself",
        ),
        (
            lambda d: (
                d["agencies"][2].update(successor_by_level={"commune": "000.20.22.H56"})
                or d["agencies"][3].update(
                    effective_to=date(2025, 6, 30), successor="000.00.12.H56"
                )
            ),
            "successor_by_level.commune: 000.20.22.H56 does not act on 2025-07-01",
        ),
        (
            lambda d: d["agencies"][0].update(successor_by_level={"commune": "000.20.22.H56"}),
            "agencies[0].successor_by_level: with a successor",
        ),
        (lambda d: d.update(sender=[]), "sender: unknown key"),
        (lambda d: d.update(agencies={"a": 1}), "agencies: expected a list of agencies"),
    ],
)
def test_each_problem_is_named_with_its_file_and_path(
    tmp_path: Path, edit: object, expected: str
) -> None:
    document = yaml.safe_load(yaml.safe_dump(BASE))
    edit(document)  # type: ignore[operator]
    path = write(tmp_path, "registry.yaml", document)
    problems = problems_of([path])
    assert any(p.startswith(f"{path}: ") and expected in p for p in problems), problems


def test_every_problem_of_every_file_is_reported_at_once(tmp_path: Path) -> None:
    broken = yaml.safe_load(yaml.safe_dump(BASE))
    broken["agencies"][0]["level"] = "ward"
    broken["senders"][0]["types"] = ["teleported"]
    missing = tmp_path / "missing.yaml"
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- 1\n", encoding="utf-8")
    problems = problems_of([write(tmp_path, "a.yaml", broken), missing, not_a_mapping])
    assert len(problems) == 4, problems
    assert any("missing.yaml: cannot read YAML" in p for p in problems)
    assert any("list.yaml: expected a mapping" in p for p in problems)


def test_an_empty_registry_knows_nobody() -> None:
    registry = Registry()
    assert registry.agency("000.00.12.H56") is None and registry.sender("urn:x") is None
    assert len(registry) == 0


def test_the_shipped_files_are_what_the_generator_writes() -> None:
    from dossier.tools import generate_catalogue as gen

    assert default_registry_file().read_text(encoding="utf-8") == gen.render_profile(
        gen.generate(2022), 2022
    )
    assert gen.SIMULATION_REGISTRY.read_text(encoding="utf-8") == gen.render_simulation_registry(
        2022
    )
    assert gen.SIMULATION_KEYS.read_text(encoding="utf-8") == gen.render_simulation_keys(2022)


def test_the_simulator_s_test_keys_are_an_extra_file_that_loads() -> None:
    from dossier.tools.generate_catalogue import SIMULATION_REGISTRY

    registry = load_registry([default_registry_file(), SIMULATION_REGISTRY])
    shipped = load_registry()
    signing = [a for a in registry.agencies() if a.public_keys]
    assert len(signing) == 3
    for agency in signing:
        # The same entry as the shipped one, plus its key.
        before = shipped.agency(agency.code)
        assert before is not None and before.public_keys == ()
        assert (before.level, before.effective_to, before.successor, before.sources) == (
            agency.level,
            agency.effective_to,
            agency.successor,
            agency.sources,
        )
    provincial = "urn:vn:portal:dichvucong.thainguyen.gov.vn"
    assert registry.sender(provincial).public_keys  # type: ignore[union-attr]
    assert not shipped.sender(provincial).public_keys  # type: ignore[union-attr]
    # The national portal, which the test fixtures send as, does not sign.
    assert not registry.sender("urn:vn:portal:dichvucong.gov.vn").public_keys  # type: ignore[union-attr]


def test_dossier_registry_check_and_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dossier.cli import main

    monkeypatch.delenv("DOSSIER_REGISTRY_FILES", raising=False)
    assert main(["registry", "check"]) == 0
    assert (
        "registry ok: 116 agencies (77 commune, 17 district, 22 province)"
        in capsys.readouterr().out
    )
    assert main(["registry", "show", "--on", "2025-07-01"]) == 0
    shown = capsys.readouterr().out
    assert "district (0)" in shown and "urn:vn:portal:dichvucong.gov.vn" in shown
    # No agency of the former Bắc Kạn acts after 2025-06-30 (its counters are still listed).
    assert not [line for line in shown.splitlines() if line.lstrip().startswith("000.00.00.H99")]
    assert "000.25.10.H56  UBND phường Đức Xuân  [2025-07-01 to open end]" in shown
    assert main(["registry", "show", "--level", "district"]) == 0
    shown = capsys.readouterr().out
    assert "000.00.31.H56  UBND TP Sông Công  [always to 2025-06-30] -> 000.00.42.H56" in shown
    broken = write(tmp_path, "broken.yaml", {"agencies": [{"code": "x"}]})
    monkeypatch.setenv("DOSSIER_REGISTRY_FILES", str(broken))
    assert main(["registry", "check"]) == 1
    assert f"{broken}: agencies[0].code: not an agency code" in capsys.readouterr().err
