"""Which values of an input identify a person (Decree 13/2023/NĐ-CP; the Law on Personal Data
Protection, in force from 1 January 2026): declared once, here, by schema path.

Two kinds of place hold personal data:
- fields the contract declares for it (`DECLARED`): the applicant's identity number, name,
  address, phone and email;
- free fields, the ones a sender adds beyond what the schema declares (`additionalProperties`
  is open), whose name says they are one of those things, in English or Vietnamese, with or
  without diacritics, in any case or spelling style (`Họ tên`, `ho_ten`, `hoTen`, `SO-CCCD`).

A field the contract declares for something else (`fees[].code`, `officer`) is never personal
by name alone: the contract says what it is. The store seals what this module finds
(`engine.store.privacy`); `dossier audit show` masks it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from functools import cache, lru_cache
from typing import Any, Final

from engine.events import TYPE_PREFIX
from schemas.codec import INBOUND_TYPES, load_schema

Path = tuple[str | int, ...]

# Contract fields that hold personal data, as paths inside an input's `data`.
DECLARED: Final[frozenset[Path]] = frozenset(
    {
        ("applicant", "id_number"),
        ("applicant", "name"),
        ("applicant", "address"),
        ("applicant", "phone"),
        ("applicant", "email"),
    }
)

# Names of free fields that hold personal data, as `field_name_key` spells them.
FREE_FIELD_NAMES: Final = frozenset(
    {
        # identity number
        "id_number", "identity_number", "id_no", "citizen_id", "national_id", "personal_id",
        "passport", "passport_number", "so_cccd", "cccd", "so_cmnd", "cmnd", "so_can_cuoc",
        "can_cuoc", "so_dinh_danh", "ma_dinh_danh", "so_dinh_danh_ca_nhan", "so_ho_chieu",
        "ho_chieu", "so_giay_to", "so_giay_to_tuy_than",
        # name
        "name", "full_name", "fullname", "first_name", "last_name", "applicant_name",
        "ho_ten", "ho_va_ten", "hoten", "ho_ten_nguoi_nop", "ten_nguoi_nop", "nguoi_nop",
        "ten_cong_dan", "ho_ten_cong_dan",
        # address
        "address", "permanent_address", "current_address", "residence", "dia_chi",
        "dia_chi_thuong_tru", "dia_chi_tam_tru", "dia_chi_lien_he", "noi_thuong_tru",
        "noi_tam_tru", "noi_o_hien_tai", "cho_o_hien_tai", "noi_cu_tru",
        # phone
        "phone", "phone_number", "mobile", "telephone", "so_dien_thoai", "dien_thoai", "sdt",
        "so_di_dong", "di_dong",
        # email
        "email", "email_address", "e_mail", "thu_dien_tu", "hop_thu",
    }
)  # fmt: skip

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=8192)
def field_name_key(name: str) -> str:
    """A field name as `FREE_FIELD_NAMES` spells it: no diacritics (đ as d), camelCase split,
    lower case, runs of anything else as one underscore."""
    spaced = _CAMEL.sub("_", name.replace("đ", "d").replace("Đ", "D"))
    bare = "".join(c for c in unicodedata.normalize("NFKD", spaced) if not unicodedata.combining(c))
    return _NOT_WORD.sub("_", bare.lower()).strip("_")


# A tree of field names: a name's subtree, or True for a field whose whole value is personal.
Tree = dict[str, "Tree | bool"]


def _tree(paths: Iterable[tuple[str, ...]], leaf: bool) -> Tree:
    root: Tree = {}
    for path in paths:
        node = root
        for part in path[:-1]:
            child = node.setdefault(part, {})
            node = child if isinstance(child, dict) else {}
        node.setdefault(path[-1], True if leaf else {})
    return root


_DECLARED_TREE: Final = _tree((tuple(str(p) for p in path) for path in DECLARED), leaf=True)


@cache
def _contract_tree(short_type: str) -> Tree:
    """Every property the inbound schema of `short_type` declares inside `data`, as a tree, with
    "*" for an array's items (so `fees[3].name` is looked up as `fees` → `*` → `name`)."""
    if short_type not in INBOUND_TYPES:
        return {}
    schema = load_schema(f"inbound/{short_type}.schema.json")
    found: set[tuple[str, ...]] = set()
    stack: list[tuple[tuple[str, ...], Any]] = [((), schema)]
    while stack:
        prefix, node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        for name, child in (node.get("properties") or {}).items():
            found.add((*prefix, name))
            stack.append(((*prefix, name), child))
        if "items" in node:
            found.add((*prefix, "*"))
            stack.append(((*prefix, "*"), node["items"]))
        for branch in ("if", "then", "else"):
            if branch in node:
                stack.append((prefix, node[branch]))
        for combined in ("allOf", "anyOf", "oneOf"):
            for part in node.get(combined) or ():
                stack.append((prefix, part))
    return _tree(sorted(found, key=len), leaf=False)


_NOTHING: Final[Tree] = {}


def personal_paths(type_: str, data: Mapping[str, Any]) -> list[Path]:
    """The paths in `data` whose values are personal data, outermost first; a path inside one
    already found is not listed (the whole value is personal)."""
    contract = _contract_tree(type_.removeprefix(TYPE_PREFIX))
    found: list[Path] = []
    # Walked with the contract's and the declaration's trees beside the data (None: a free
    # subtree, where every name is the sender's). Iterative: a hostile input nested as deep as
    # the decoder allows must not exhaust the stack.
    stack: list[tuple[Path, Tree | None, Tree, Any]] = [((), contract, _DECLARED_TREE, data)]
    while stack:
        path, known, declared, node = stack.pop()
        if isinstance(node, Mapping):
            for name, value in node.items():
                if not isinstance(name, str):
                    continue
                mark = declared.get(name)
                if mark is True:
                    found.append((*path, name))
                    continue
                below = known.get(name) if known is not None else None
                if below is None and field_name_key(name) in FREE_FIELD_NAMES:
                    found.append((*path, name))  # a free field named as personal data
                    continue
                inner = mark if isinstance(mark, dict) else _NOTHING
                if isinstance(value, Mapping | list):
                    sub = below if isinstance(below, dict) else None
                    stack.append(((*path, name), sub, inner, value))
        elif isinstance(node, list):
            items = known.get("*") if known is not None else None
            sub = items if isinstance(items, dict) else None
            for index, value in enumerate(node):
                if isinstance(value, Mapping | list):
                    stack.append(((*path, index), sub, _NOTHING, value))
    found.sort(key=_path_order)
    return found


def _path_order(path: Path) -> tuple[tuple[int, str], ...]:
    return tuple((0, str(p)) if isinstance(p, str) else (1, f"{p:012d}") for p in path)
