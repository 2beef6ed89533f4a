"""Copies of frozen, slotted dataclasses with some fields changed: a fast `dataclasses.replace`.

`dataclasses.replace` inspects every field on every call and builds the copy through the
frozen `__init__`, one `object.__setattr__` per field. For the snapshots the engine copies once
or more per input (dossiers, history rows, stored messages) that was the largest single cost of
applying one. The copier below is generated once per class: straight-line code that copies the
slots through their descriptors, then sets the changed ones; the class stays frozen for
everyone else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

Copier = Callable[[T, Mapping[str, Any]], T]


def compile_replace(cls: type[T]) -> Copier[T]:
    """`copy(obj, changes)`, equal to `dataclasses.replace(obj, **changes)` for `cls`."""
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        # replace() would run it; the generated copy would not.
        raise TypeError(f"{cls.__name__} has a __post_init__: use dataclasses.replace")
    names = [f.name for f in dataclasses.fields(cls)]
    setters = {n: getattr(cls, n).__set__ for n in names}
    lines = [f"def copy_{cls.__name__}(obj, changes):", "    new = _new(_cls)"]
    lines += [f"    _set_{n}(new, obj.{n})" for n in names]
    lines += [
        "    for name, value in changes.items():",
        "        setter = _setters.get(name)",
        "        if setter is None:",
        f"            raise TypeError(f'unknown {cls.__name__} field: {{name}}')",
        "        setter(new, value)",
        "    return new",
    ]
    namespace: dict[str, Any] = {"_cls": cls, "_new": object.__new__, "_setters": setters}
    namespace.update({f"_set_{n}": setter for n, setter in setters.items()})
    exec("\n".join(lines), namespace)
    copier: Copier[T] = namespace[f"copy_{cls.__name__}"]
    return copier
