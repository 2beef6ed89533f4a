"""`dossier workflows import`: a province's procedure list (CSV) into one YAML file.

Every kind of bad row is named with its line; the shipped Thái Nguyên catalogue matches the
seed report and is exactly what its CSV imports to, procedures and migration plans alike.
"""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from dossier.tools.catalogue_import import (
    CatalogueImportError,
    import_catalogue,
    plan_migrations,
    render_plans_yaml,
)
from engine.procedures import Catalogue, MigrationPlan, default_workflows_dir, load_catalogue

HEADER = (
    "code,name,levels,working_days,per_level_days,effective_from,effective_to,fees,"
    "online_level,discount_percent,discount_condition,discount_from,discount_to,legal_basis"
)
GOOD_ROW = "T.0001,Thủ tục thử,commune,3,,2021-01-01,,LP-T:10000:Lệ phí,4,50,online,,,Nghị quyết"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A catalogue root with the shipped templates and the reference procedures only."""
    root = tmp_path / "workflows"
    shutil.copytree(default_workflows_dir() / "templates", root / "templates")
    (root / "procedures").mkdir()
    shutil.copyfile(
        default_workflows_dir() / "procedures" / "reference.yaml",
        root / "procedures" / "reference.yaml",
    )
    return root


def write_csv(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "province.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def problems(tmp_path: Path, root: Path, *rows: str, header: str = HEADER) -> list[str]:
    with pytest.raises(CatalogueImportError) as caught:
        import_catalogue(write_csv(tmp_path, *rows, header=header), root)
    assert not (root / "procedures" / "province.yaml").exists(), "nothing written on errors"
    return [str(p) for p in caught.value.problems]


def test_good_rows_become_one_loadable_yaml_file(tmp_path: Path, root: Path) -> None:
    result = import_catalogue(
        write_csv(
            tmp_path,
            GOOD_ROW,
            "T.0002,Liên thông thử,commune>district,30,commune:5;district:25,2021-01-01,"
            "2025-06-30,,4,,,,,",
            "T.0002,Liên thông thử,commune>province,30,,01/07/2025,,,full,,,,,",
        ),
        root,
    )
    assert result.output == root / "procedures" / "province.yaml"
    assert [p.code for p in result.procedures] == ["T.0001", "T.0002"]
    assert result.warnings == []
    catalogue = load_catalogue(root)
    first = catalogue.versions("T.0001")[0]
    assert first.template == "single-level" and first.levels == ("commune",)
    assert first.fees["LP-T"].amount == 10000
    (rule,) = first.discounts
    assert rule.id == "LP-T-online-50" and rule.channels == frozenset({2})
    assert not rule.full_online and rule.legal_basis == "Nghị quyết"
    v1, v2 = catalogue.versions("T.0002")
    assert v1.levels == ("commune", "district") and v1.effective_to == date(2025, 6, 30)
    assert v2.levels == ("commune", "province") and v2.effective_from == date(2025, 7, 1)
    assert v1.deadline.per_level == {"commune": 5, "district": 25}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (GOOD_ROW.replace(",commune,", ",county,"), ":2: levels 'county': unknown level"),
        (GOOD_ROW.replace(",commune,", ",commune>commune,"), ":2: levels"),
        (GOOD_ROW.replace(",commune,", ",commune>district>province,"), "no default template"),
        (GOOD_ROW.replace(",3,", ",three,"), ":2: working_days 'three': not a number"),
        (GOOD_ROW.replace(",3,", ",1,5,").replace(",,2021", ",2021"), ":2: "),
        (GOOD_ROW.replace(",3,", ",-2,"), "working_days '-2': must be a positive number"),
        (GOOD_ROW.replace("2021-01-01", "2021-13-01"), "effective_from '2021-13-01': not a date"),
        (GOOD_ROW.replace("2021-01-01", ""), "effective_from: a date is required"),
        (GOOD_ROW.replace("LP-T:10000", "LP-T:10.000"), "must be whole VND digits"),
        (GOOD_ROW.replace("LP-T:10000:Lệ phí", "LP-T"), "is not CODE:AMOUNT"),
        (GOOD_ROW.replace(",50,", ",150,"), "discount_percent '150': must be at most 100"),
        (GOOD_ROW.replace("Nghị quyết", ""), "legal_basis: every discount cites its legal basis"),
        (GOOD_ROW.replace("LP-T:10000:Lệ phí", ""), "a discount needs fees"),
        (GOOD_ROW.replace(",online,", ",by-post,"), "discount_condition 'by-post'"),
        (GOOD_ROW.replace(",4,50,online", ",3,50,full-online"), "need online level 4"),
        (GOOD_ROW.replace(",4,", ",7,"), "online_level '7': must be 1-4"),
        ("T.0003,,province,5,,2021-01-01,,,4,,,,,", ":2: name: a procedure name is required"),
        (",Không mã,province,5,,2021-01-01,,,4,,,,,", ":2: code: a procedure code is required"),
    ],
)
def test_a_bad_row_is_named_by_its_line(tmp_path: Path, root: Path, row: str, message: str) -> None:
    found = problems(tmp_path, root, row)
    assert any(message in p for p in found), found
    assert all(p.startswith("province.csv:") for p in found)


def test_unknown_template_and_wrong_level_count_for_a_template(tmp_path: Path, root: Path) -> None:
    header = HEADER + ",template"
    found = problems(
        tmp_path,
        root,
        GOOD_ROW + ",two-step",
        GOOD_ROW.replace("T.0001", "T.0002") + ",inter-level",
        header=header,
    )
    assert any(
        p.startswith("province.csv:2: template 'two-step': unknown template")
        and "inter-level" in p
        and "single-level" in p
        for p in found
    ), found
    assert any(
        "province.csv:3: levels 'commune': template 'inter-level' takes 2 level(s)" in p
        for p in found
    ), found


def test_per_level_days_must_name_the_row_levels_and_add_up(tmp_path: Path, root: Path) -> None:
    row = "T.0009,Liên thông,commune>province,30,commune:5;province:20,2021-01-01,,,4,,,,,"
    assert any("add up to 25, not working_days 30" in p for p in problems(tmp_path, root, row))
    row = "T.0009,Liên thông,commune>province,30,commune:5;district:25,2021-01-01,,,4,,,,,"
    assert any("'district:25' is not LEVEL:DAYS" in p for p in problems(tmp_path, root, row))


def test_overlapping_versions_name_both_lines(tmp_path: Path, root: Path) -> None:
    found = problems(
        tmp_path,
        root,
        "T.0005,Thủ tục,district,5,,2021-01-01,,,4,,,,,",
        "T.0005,Thủ tục,commune,5,,2025-07-01,,,4,,,,,",
    )
    assert found == [
        "province.csv:3: T.0005 from 2025-07-01 overlaps line 2 (2021-01-01 to open end); "
        "end that version first (effective_to)"
    ]


def test_every_bad_line_is_reported_at_once(tmp_path: Path, root: Path) -> None:
    found = problems(
        tmp_path,
        root,
        GOOD_ROW.replace(",commune,", ",county,"),
        GOOD_ROW.replace("T.0001", "T.0002"),
        GOOD_ROW.replace("T.0001", "T.0003").replace(",3,", ",x,"),
    )
    assert [p.split(":")[1] for p in found] == ["2", "4"]


def test_missing_columns_and_extra_cells(tmp_path: Path, root: Path) -> None:
    found = problems(tmp_path, root, "T.1,Thủ tục,commune", header="code,name,levels")
    assert found == ["province.csv:1: missing column(s): working_days, effective_from"]
    found = problems(tmp_path, root, GOOD_ROW + ",surplus")
    assert found == ["province.csv:2: more cells than the 14 columns"]


def test_codes_defined_elsewhere_are_skipped_and_checked(tmp_path: Path, root: Path) -> None:
    """The reference procedures stay as reference.yaml defines them; a row that says
    otherwise is a warning naming its line."""
    result = import_catalogue(
        write_csv(
            tmp_path,
            GOOD_ROW,
            "1.001193,Đăng ký khai sinh,commune,1,,2021-01-01,,,4,,,,,",
            "1.004222,Đăng ký thường trú,commune,5,,2021-01-01,,,4,,,,,",
        ),
        root,
    )
    assert result.skipped == {"1.001193": "reference.yaml", "1.004222": "reference.yaml"}
    assert [p.code for p in result.procedures] == ["T.0001"]
    warnings = [str(w) for w in result.warnings]
    assert any(
        w.startswith("province.csv:4: 1.004222 v1 working_days: 5 here, 7 in reference.yaml")
        for w in warnings
    ), warnings
    assert any("province.csv:4: 1.004222 v1 fees" in w for w in warnings), warnings
    assert not any(":3:" in w for w in warnings), warnings


def test_unknown_columns_are_a_warning(tmp_path: Path, root: Path) -> None:
    result = import_catalogue(
        write_csv(tmp_path, GOOD_ROW + ",Sở Tư pháp", header=HEADER + ",agency"), root
    )
    assert [str(w) for w in result.warnings] == [
        "province.csv:1: column 'agency' is not used (ignored)"
    ]


def test_spreadsheet_csv_with_byte_order_mark_and_quoted_cells(tmp_path: Path, root: Path) -> None:
    path = tmp_path / "province.csv"
    text = textwrap.dedent(
        f"""\
        {HEADER}
        T.0007,"Chứng thực bản sao, chữ ký",commune,0.5,,2021-01-01,,,4,,,,,
        """
    )
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    result = import_catalogue(path, root)
    version = load_catalogue(root).versions("T.0007")[0]
    assert version.name == "Chứng thực bản sao, chữ ký"
    assert float(version.deadline.working_days) == 0.5
    assert result.warnings == []


# --- The shipped catalogue -----------------------------------------------------------------


SHIPPED_CSV = default_workflows_dir() / "catalogue" / "thai-nguyen.csv"
SHIPPED_YAML = default_workflows_dir() / "procedures" / "thai-nguyen.yaml"
SHIPPED_PLANS = default_workflows_dir() / "migrations" / "thai-nguyen.yaml"


def test_shipped_yaml_is_what_the_shipped_csv_imports_to(tmp_path: Path, root: Path) -> None:
    out = tmp_path / "out"
    result = import_catalogue(SHIPPED_CSV, default_workflows_dir(), out)
    assert result.warnings == []
    assert sorted(result.skipped) == ["1.001193", "1.004222", "DD.GCN.LD"]
    assert (out / "thai-nguyen.yaml").read_text(encoding="utf-8") == SHIPPED_YAML.read_text(
        encoding="utf-8"
    )
    assert result.plans_output == tmp_path / "migrations" / "thai-nguyen.yaml"
    assert result.plans_output.read_text(encoding="utf-8") == SHIPPED_PLANS.read_text(
        encoding="utf-8"
    )


def test_shipped_catalogue_matches_the_seed_report() -> None:
    """1,231 procedures in 2022: 1,072 decided at province, 115 at district, 44 at commune."""
    catalogue = load_catalogue()
    census = date(2022, 10, 1)
    by_level: dict[str, int] = {}
    for code in catalogue.codes():
        version = next(v for v in catalogue.versions(code) if v.in_force_on(census))
        by_level[version.levels[-1]] = by_level.get(version.levels[-1], 0) + 1
    assert by_level == {"province": 1072, "district": 115, "commune": 44}
    assert {"1.001193", "1.004222", "DD.GCN.LD"} <= set(catalogue.codes())
    # Two-tier government: no version involving the district is in force from 1 July 2025.
    for version in catalogue.all_versions():
        if "district" in version.levels:
            assert version.effective_to == date(2025, 6, 30), version.code
    after = date(2025, 7, 1)
    successors = [
        c for c in catalogue.codes() if any(v.in_force_on(after) for v in catalogue.versions(c))
    ]
    assert 1200 < len(successors) < 1231  # a few district procedures were abolished


# --- Migration plans -----------------------------------------------------------------------


def shipped_plans(catalogue: Catalogue) -> list[MigrationPlan]:
    return [m for m in catalogue.migrations() if Path(m.source_file) == SHIPPED_PLANS]


def test_shipped_plans_move_the_146_procedures_that_change_on_1_july_2025() -> None:
    catalogue = load_catalogue()
    plans = shipped_plans(catalogue)
    assert len(plans) == 146
    assert {p.effective for p in plans} == {date(2025, 7, 1)}
    assert all(p.basis.startswith("illustrative: ") and "district" in p.basis for p in plans)
    # With the hand-written plan of DD.GCN.LD: every procedure whose version ends on
    # 2025-06-30 and has a successor from 2025-07-01.
    changing = {
        code
        for code in catalogue.codes()
        for earlier, later in zip(
            catalogue.versions(code), catalogue.versions(code)[1:], strict=False
        )
        if earlier.effective_to == date(2025, 6, 30) and later.effective_from == date(2025, 7, 1)
    }
    assert {p.procedure for p in catalogue.migrations()} == changing
    assert len(changing) == 147


def test_each_shipped_plan_maps_the_levels_its_params_change_and_every_open_state() -> None:
    catalogue = load_catalogue()
    Kind = tuple[tuple[str, ...], tuple[str, ...]]
    counts: dict[Kind, int] = {}
    levels: dict[Kind, set[tuple[tuple[str, str], ...]]] = {}
    for plan in shipped_plans(catalogue):
        source = catalogue.get(plan.procedure, plan.from_version)
        target = catalogue.get(plan.procedure, plan.to_version)
        assert source is not None and target is not None
        assert source.template == target.template
        # The template binds levels to its parameters in order: a level whose parameter
        # changed is renamed, the others stay.
        changed = {
            old: new for old, new in zip(source.levels, target.levels, strict=True) if old != new
        }
        assert dict(plan.levels) == changed, plan.procedure
        open_states = [s.name for s in source.states.values() if not s.final]
        assert dict(plan.states) == {s: s for s in open_states}, plan.procedure
        kind = (source.levels, target.levels)
        counts[kind] = counts.get(kind, 0) + 1
        levels.setdefault(kind, set()).add(tuple(plan.levels.items()))
    assert counts == {
        (("district",), ("commune",)): 82,
        (("district",), ("province",)): 16,
        (("district", "province"), ("commune", "province")): 40,
        (("commune", "district"), ("commune", "province")): 8,
    }
    assert levels == {
        (("district",), ("commune",)): {(("district", "commune"),)},
        (("district",), ("province",)): {(("district", "province"),)},
        (("district", "province"), ("commune", "province")): {(("district", "commune"),)},
        (("commune", "district"), ("commune", "province")): {(("district", "province"),)},
    }


def test_the_plans_file_writes_each_state_map_once_per_template() -> None:
    text = SHIPPED_PLANS.read_text(encoding="utf-8")
    assert text.startswith("# Generated by `dossier workflows import thai-nguyen.csv`")
    assert text.count("states: &single_level_states") == 1
    assert text.count("states: &inter_level_states") == 1
    assert text.count("states: *single_level_states") == 82 + 16 - 1
    assert text.count("states: *inter_level_states") == 40 + 8 - 1


def test_a_change_of_template_gets_no_invented_state_mapping(tmp_path: Path, root: Path) -> None:
    """inter-level -> single-level share state names (registered, received, supplementing...),
    but not their meaning: no plan, and a comment says why."""
    header = HEADER + ",template"
    result = import_catalogue(
        write_csv(
            tmp_path,
            "T.0010,Liên thông,commune>district,30,,2021-01-01,2025-06-30,,4,,,,,,",
            "T.0010,Liên thông,commune,30,,2025-07-01,,,4,,,,,,single-level",
            "T.0011,Một cấp,district,5,,2021-01-01,2025-06-30,,4,,,,,,",
            "T.0011,Một cấp,commune,5,,2025-07-01,,,4,,,,,,",
            # A gap between the versions: nothing open waits for the later one.
            "T.0012,Có khoảng trống,district,5,,2021-01-01,2025-06-29,,4,,,,,,",
            "T.0012,Có khoảng trống,commune,5,,2025-07-01,,,4,,,,,,",
            header=header,
        ),
        root,
    )
    assert [(d.code, d.levels) for d in result.plans] == [("T.0011", {"district": "commune"})]
    assert [(n.code, n.from_version, n.to_version) for n in result.no_plans] == [("T.0010", 1, 2)]
    assert "template inter-level -> single-level" in result.no_plans[0].reason
    catalogue = load_catalogue(root)
    assert catalogue.migration_from("T.0010", 1) is None
    assert catalogue.migration_from("T.0012", 1) is None
    plan = catalogue.migration_from("T.0011", 1)
    assert plan is not None and plan.effective == date(2025, 7, 1)
    assert plan.source_file == str(root / "migrations" / "province.yaml")
    text = (root / "migrations" / "province.yaml").read_text(encoding="utf-8")
    assert "# T.0010 v1 -> v2: no plan, template inter-level -> single-level" in text


def test_a_state_without_a_counterpart_is_left_out_not_guessed(tmp_path: Path, root: Path) -> None:
    """Should the next version lack a state (or have it elsewhere), the plan maps the others
    and names the one it leaves out: those dossiers are refused, not moved by a guess."""
    result = import_catalogue(
        write_csv(
            tmp_path,
            "T.0011,Một cấp,district,5,,2021-01-01,2025-06-30,,4,,,,,",
            "T.0011,Một cấp,commune,5,,2025-07-01,,,4,,,,,",
        ),
        root,
    )
    catalogue = load_catalogue(root)
    v1, v2 = catalogue.versions("T.0011")
    states = dict(v2.states)
    del states["awaiting_payment"]
    states["resolved"] = replace(states["resolved"], level="province")  # not where v1's goes
    changed = Catalogue([v1, replace(v2, states=states)])
    (draft,), no_plans = plan_migrations(result.procedures, changed)
    assert no_plans == []
    assert draft.left_out == ("awaiting_payment", "resolved")
    assert dict(draft.states) == {
        s: s for s in ("registered", "received", "processing", "supplementing")
    }
    text = render_plans_yaml([draft], [], "province.csv")
    assert "# left out" in text and "awaiting_payment, resolved" in text
    assert "awaiting_payment:" not in text and "resolved:" not in text
    assert "1 plan(s) leave states out" in text


def test_a_hand_written_plan_for_an_imported_version_is_named_not_doubled(
    tmp_path: Path, root: Path
) -> None:
    (root / "migrations").mkdir()
    (root / "migrations" / "hand.yaml").write_text(
        textwrap.dedent(
            """\
            plans:
              - {procedure: T.0011, from_version: 1, to_version: 2, effective: 2025-07-01,
                 states: {registered: registered}, levels: {district: commune}, basis: "x"}
            """
        ),
        encoding="utf-8",
    )
    found = problems(
        tmp_path,
        root,
        "T.0011,Một cấp,district,5,,2021-01-01,2025-06-30,,4,,,,,",
        "T.0011,Một cấp,commune,5,,2025-07-01,,,4,,,,,",
    )
    assert found == [
        f"province.csv:3: migration plan: a second plan for version 1 (the first in "
        f"{root / 'migrations' / 'hand.yaml'}): a dossier moves by one plan"
    ]
    assert not (root / "migrations" / "province.yaml").exists()
