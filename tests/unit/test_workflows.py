"""Loading and validating procedure definitions: every kind of broken definition is named."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from dossier.cli import main
from engine.procedures import WorkflowError, default_workflows_dir, load_catalogue

GOOD_PROCEDURE = """
procedures:
  - code: "T.0001"
    name: Thủ tục thử
    versions:
      - version: 1
        effective_from: 2021-01-01
        levels: [commune]
        initial: registered
        states:
          registered: {status: 1, level: commune}
          received: {status: 2, level: commune}
          returned: {status: 10, level: commune, final: true}
        transitions:
          - {event: received, from: registered, to: received, level: commune}
          - {event: result-returned, from: received, to: returned, level: commune}
        deadline: {working_days: 3}
        fees:
          - {code: LP-T, amount: 10000}
        discounts:
          - {fee: LP-T, percent: 50, channels: [2], legal_basis: "Nghị quyết thử"}
"""


def write_catalogue(tmp_path: Path, procedure_yaml: str) -> Path:
    root = tmp_path / "workflows"
    shutil.copytree(default_workflows_dir() / "templates", root / "templates")
    (root / "procedures").mkdir(parents=True)
    (root / "procedures" / "test.yaml").write_text(
        textwrap.dedent(procedure_yaml), encoding="utf-8"
    )
    return root


def problems_of(tmp_path: Path, procedure_yaml: str) -> list[str]:
    with pytest.raises(WorkflowError) as caught:
        load_catalogue(write_catalogue(tmp_path, procedure_yaml))
    return [str(p) for p in caught.value.problems]


def test_shipped_catalogue_is_valid_and_has_both_land_certificate_versions() -> None:
    catalogue = load_catalogue()
    assert {"1.001193", "1.004222", "DD.GCN.LD"} <= set(catalogue.codes())
    v1, v2 = catalogue.versions("DD.GCN.LD")
    assert v1.levels == ("commune", "district") and str(v1.effective_to) == "2025-06-30"
    assert v2.levels == ("commune", "province") and str(v2.effective_from) == "2025-07-01"
    assert v1.template == v2.template == "inter-level"


def test_a_good_definition_loads(tmp_path: Path) -> None:
    catalogue = load_catalogue(write_catalogue(tmp_path, GOOD_PROCEDURE))
    [version] = catalogue.versions("T.0001")
    assert version.fees["LP-T"].amount == 10000
    assert version.discounts[0].payable(10001) == 5000  # rounded down, in the applicant's favour


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("to: returned, level: commune}", "to: nowhere, level: commune}"),
            "versions[0].transitions[1].to: unknown state 'nowhere'",
        ),
        (
            ("received: {status: 2, level: commune}", "received: {level: commune}"),
            "versions[0].states.received: state has no status code",
        ),
        (
            ("fee: LP-T,", "fee: LP-X,"),
            "versions[0].discounts[0].fee: discount on unknown fee 'LP-X'",
        ),
        (
            (
                "returned: {status: 10, level: commune, final: true}",
                "returned: {status: 10, level: commune, final: true}\n"
                "          orphan: {status: 4, level: commune}",
            ),
            "versions[0].states.orphan: unreachable from the initial state 'registered'",
        ),
        (
            ("- {event: result-returned, from: received, to: returned, level: commune}", ""),
            "versions[0].states.received: non-final state has no exit",
        ),
        (
            ("status: 2,", "status: 11,"),
            "versions[0].states.received.status: status code must be 1-10, got 11",
        ),
        (
            (
                "level: commune}\n          - {event: result-returned",
                "level: ward}\n          - {event: result-returned",
            ),
            "versions[0].transitions[0].level: unknown level 'ward'",
        ),
        (
            ("deadline: {working_days: 3}", "deadline: {working_days: 3, supplementation: pause}"),
            "versions[0].deadline.supplementation: must be 'restart' or 'shift'",
        ),
        (
            ("{code: LP-T, amount: 10000}", "{code: LP-T, amount: 100.5}"),
            "versions[0].fees[0].amount: must be whole VND",
        ),
    ],
)
def test_each_kind_of_broken_definition_is_named(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    old, new = edit
    assert old in GOOD_PROCEDURE
    problems = problems_of(tmp_path, GOOD_PROCEDURE.replace(old, new, 1))
    assert any(p.endswith(expected) or expected in p for p in problems), problems
    assert all("procedures/test.yaml: procedures[0]" in p for p in problems), problems


def test_overlapping_versions_are_rejected(tmp_path: Path) -> None:
    second = (
        GOOD_PROCEDURE.split("    versions:\n", 1)[1]
        .replace("version: 1", "version: 2")
        .replace("effective_from: 2021-01-01", "effective_from: 2024-01-01")
    )
    problems = problems_of(tmp_path, GOOD_PROCEDURE + second)
    assert any("version 2 (from 2024-01-01) overlaps version 1" in p for p in problems), problems


def test_unknown_template_and_missing_parameter(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        procedures:
          - code: "T.0002"
            name: a
            effective_from: 2021-01-01
            template: no-such-shape
            deadline: {working_days: 1}
          - code: "T.0003"
            name: b
            effective_from: 2021-01-01
            template: inter-level
            params: {receiving: commune}
            deadline: {working_days: 1}
        """,
    )
    assert any("procedures[0].template: unknown template 'no-such-shape'" in p for p in problems)
    assert any(
        "procedures[1].params: template 'inter-level' needs parameters: upper" in p
        for p in problems
    )


def test_check_command_passes_on_the_shipped_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workflows", "check"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_check_command_fails_with_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_catalogue(tmp_path, GOOD_PROCEDURE.replace("fee: LP-T,", "fee: LP-X,"))
    assert main(["workflows", "check", "--dir", str(root)]) == 1
    err = capsys.readouterr().err
    assert (
        "test.yaml: procedures[0].versions[0].discounts[0].fee: discount on unknown fee 'LP-X'"
        in err
    )


def test_show_mermaid_draws_the_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workflows", "show", "DD.GCN.LD", "--version", "2", "--mermaid"]) == 0
    out = capsys.readouterr().out
    assert "stateDiagram-v2" in out
    assert "upper_processing --> awaiting_payment: payment-requested @province" in out
