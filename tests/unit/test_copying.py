"""engine.copying: the generated copier is `dataclasses.replace` for the classes it serves."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from engine.application.ports import HistoryRow, OutboxMessage, Position
from engine.copying import compile_replace

AT = datetime(2025, 7, 1, 8, 0, tzinfo=UTC)


def test_a_copy_equals_dataclasses_replace_and_leaves_the_original_alone() -> None:
    message = OutboxMessage("dossier.status", b"H1", b"{}", "H1/status/1", AT)
    copy = compile_replace(OutboxMessage)
    copied = copy(message, {"id": 7})
    assert copied == dataclasses.replace(message, id=7)
    assert copied.id == 7 and message.id is None
    assert copy(message, {}) == message and copy(message, {}) is not message


def test_fields_left_out_of_equality_are_copied_too() -> None:
    row = HistoryRow(
        "H1",
        1,
        "urn:s",
        "e1",
        "t",
        AT,
        1,
        {},
        Position("t", 0, 0),
        None,
        "new",
        1,
        1,
        prev_hash="p",
    )
    copied = compile_replace(HistoryRow)(row, {"chain_hash": "c"})
    assert (copied.prev_hash, copied.chain_hash) == ("p", "c")


def test_a_copy_stays_frozen() -> None:
    message = OutboxMessage("dossier.status", b"H1", b"{}", "H1/status/1", AT)
    copied = compile_replace(OutboxMessage)(message, {"id": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        copied.id = 2  # type: ignore[misc]


def test_an_unknown_field_is_refused() -> None:
    message = OutboxMessage("dossier.status", b"H1", b"{}", "H1/status/1", AT)
    with pytest.raises(TypeError, match="unknown OutboxMessage field: ident"):
        compile_replace(OutboxMessage)(message, {"ident": 1})


def test_classes_it_cannot_copy_faithfully_are_refused() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        amount: int

        def __post_init__(self) -> None:
            if self.amount < 0:
                raise ValueError("negative")

    @dataclasses.dataclass(frozen=True)
    class Unslotted:
        amount: int

    with pytest.raises(TypeError, match="__post_init__"):
        compile_replace(Checked)
    with pytest.raises(TypeError, match="not a slotted dataclass"):
        compile_replace(Unslotted)
