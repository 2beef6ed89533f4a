"""The declaration of personal data (schemas.personal_data) and sealing it
(engine.store.privacy): what is found, that sealing leaves no personal value in clear and opens
back to the same data, and that hostile shapes stay bounded."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from engine.application.ports import HistoryRow, Position
from engine.store.privacy import (
    ERASED,
    PersonalDataVault,
    PrivacyKeyError,
    PrivacySecret,
    is_token,
    open_value,
)
from engine.store.tables import metadata
from schemas.personal_data import field_name_key, personal_paths

SUBMITTED = "vn.gov.dossier.submitted"
SECRET = PrivacySecret.from_bytes(b"unit test privacy secret 32 byte")


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Họ tên", "ho_ten"),
        ("họ và tên", "ho_va_ten"),
        ("soCCCD", "so_cccd"),
        ("SO-CCCD", "so_cccd"),
        ("Địa chỉ thường trú", "dia_chi_thuong_tru"),
        ("số điện thoại", "so_dien_thoai"),
        ("E-mail", "e_mail"),
        ("fullName", "full_name"),
    ],
)
def test_field_names_are_compared_without_diacritics_case_or_style(name: str, key: str) -> None:
    assert field_name_key(name) == key


def test_declared_fields_and_free_fields_by_name_are_personal_and_contract_fields_are_not() -> None:
    data = {
        "procedure": "1.001193",
        "agency": "000.00.19.H56",
        "applicant": {"kind": "citizen", "id_number": "079212345678", "name": "A"},
        "fees": [{"code": "LP", "amount": 1}],
        "extra": {"Họ tên": "B", "people": [{"soDienThoai": "09"}, {"note": "x"}]},
    }
    assert personal_paths(SUBMITTED, data) == [
        ("applicant", "id_number"),
        ("applicant", "name"),
        ("extra", "Họ tên"),
        ("extra", "people", 0, "soDienThoai"),
    ]
    # `kind`, `procedure`, `agency` and the fees are the contract's, never personal by name.
    received = {"agency": "000.00.19.H56", "officer": "can bo 1", "ghi_chu": {"dia_chi": "x"}}
    assert personal_paths("vn.gov.dossier.received", received) == [("ghi_chu", "dia_chi")]


def test_a_personal_object_is_sealed_whole() -> None:
    data = {"applicant": {"kind": "citizen", "id_number": "1", "name": "A"}, "dia_chi": {"so": 1}}
    assert ("dia_chi",) in personal_paths(SUBMITTED, data)
    assert not any(p[:1] == ("dia_chi",) and len(p) > 1 for p in personal_paths(SUBMITTED, data))


def test_deeply_nested_free_fields_do_not_exhaust_the_stack() -> None:
    nested: dict[str, Any] = {"ho_ten": "deep"}
    for _ in range(5000):
        nested = {"x": nested}
    assert len(personal_paths(SUBMITTED, {"extra": nested})[0]) == 5002


def memory_db() -> Any:
    db = create_engine("sqlite://")
    metadata.create_all(db)
    return db


def row(code: str, data: dict[str, Any], type_: str = SUBMITTED) -> HistoryRow:
    return HistoryRow(
        dossier_code=code,
        seq=1,
        source="urn:test",
        event_id=f"e-{code}",
        type=type_,
        event_time=datetime(2025, 7, 1, tzinfo=UTC),
        schema_version=1,
        envelope={"data": data},
        position=Position("dossier.submission", 0, 1),
        state_before=None,
        state_after="submitted",
        status_code=1,
        workflow_version=1,
    )


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.text(min_size=0, max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=20,
)
secrets_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N")), min_size=8, max_size=30
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.dictionaries(st.text(max_size=12), json_values, max_size=5),
    secret_name=secrets_text,
    secret_number=st.from_regex(r"[0-9]{12}", fullmatch=True),
    hidden_key=st.sampled_from(["ho_ten", "Họ và tên", "soCCCD", "email", "dia_chi_tam_tru"]),
)
def test_sealing_leaves_no_personal_value_in_clear_and_opens_back(
    extra: dict[str, Any], secret_name: str, secret_number: str, hidden_key: str
) -> None:
    data = {
        **extra,
        "applicant": {"kind": "citizen", "id_number": secret_number, "name": secret_name},
        "ghi_chu": {hidden_key: secret_name},
    }
    vault = PersonalDataVault(SECRET, personal_paths)
    db = memory_db()
    with db.begin() as connection:
        (sealed,) = vault.seal_history(connection, [row("D-1", data)])
        stored = orjson.dumps(sealed.envelope)
        assert secret_number.encode() not in stored
        assert secret_name.encode() not in stored
        assert orjson.dumps(secret_name)[1:-1] not in stored
        keys = vault.keys_for(connection, vault.key_ids_in([sealed.envelope]))
    assert is_token(sealed.envelope["data"]["applicant"]["name"])
    assert vault.open_data("D-1", sealed.envelope["data"], keys) == orjson.loads(orjson.dumps(data))


def test_one_person_one_key_across_dossiers_and_later_inputs_use_the_dossiers_key() -> None:
    vault = PersonalDataVault(SECRET, personal_paths)
    db = memory_db()
    person = {"kind": "citizen", "id_number": "079 2123 45678", "name": "A"}
    with db.begin() as connection:
        first, second = vault.seal_history(
            connection,
            [
                row("D-1", {"applicant": person}),
                row("D-2", {"applicant": {**person, "id_number": "079212345678"}}),
            ],
        )
        (later,) = vault.seal_history(
            connection, [row("D-1", {"ho_ten": "A"}, "vn.gov.dossier.received")]
        )
    ids = vault.key_ids_in
    assert ids([first.envelope]) == ids([second.envelope]) == ids([later.envelope])


def test_a_token_opens_only_in_its_own_dossier_and_field() -> None:
    vault = PersonalDataVault(SECRET, personal_paths)
    db = memory_db()
    with db.begin() as connection:
        (sealed,) = vault.seal_history(
            connection,
            [row("D-1", {"applicant": {"kind": "citizen", "id_number": "1", "name": "A"}})],
        )
        keys = vault.keys_for(connection, vault.key_ids_in([sealed.envelope]))
    token = sealed.envelope["data"]["applicant"]["name"]
    assert vault.open_data("D-1", {"applicant": {"name": token}}, keys)["applicant"]["name"] == "A"
    assert (
        vault.open_data("D-2", {"applicant": {"name": token}}, keys)["applicant"]["name"] == ERASED
    )
    assert (
        vault.open_data("D-1", {"applicant": {"id_number": token}}, keys)["applicant"]["id_number"]
        == ERASED
    )


@given(garbage=st.text(max_size=200))
def test_a_malformed_token_opens_to_erased_never_raises(garbage: str) -> None:
    keys = {"k": b"\0" * 32}
    assert open_value("pd1:" + garbage, keys, b"place") == ERASED
    assert open_value("pd1:k:" + garbage, keys, b"place") == ERASED


def test_a_short_or_malformed_secret_is_refused() -> None:
    with pytest.raises(PrivacyKeyError, match="at least 32"):
        PrivacySecret.from_bytes(b"short")
    with pytest.raises(PrivacyKeyError, match="not base64"):
        PrivacySecret.from_text("not base64!!")
    assert PrivacySecret.from_text(base64.b64encode(b"x" * 32).decode()).person("1") != (
        PrivacySecret.from_text(base64.b64encode(b"y" * 32).decode()).person("1")
    )


def test_processes_starting_at_once_agree_on_one_new_secret_file(tmp_path: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from dossier.composition import load_privacy_secret
    from dossier.settings import Settings

    path = tmp_path / "state" / "privacy.key"
    local = replace(Settings.from_env(), privacy_key="", privacy_key_file=path)
    with ThreadPoolExecutor(8) as pool:
        secrets_made = list(pool.map(lambda _: load_privacy_secret(local, create=True), range(16)))
    assert len({s.lookup_key for s in secrets_made}) == 1
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["privacy.key"]  # no draft left behind
    with pytest.raises(PrivacyKeyError, match="no privacy key"):
        load_privacy_secret(replace(local, privacy_key_file=tmp_path / "absent.key"))
