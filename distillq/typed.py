"""Typed objects from YAML, JSON and the environment, through pydantic.

The job spec, the records on storage and the settings are plain frozen dataclasses; pydantic
validates raw values into them (types, nested records, unions, unknown keys). This module
holds what all three share: one cached validator per class, and the path of an error's
location in the spelling users write (``students[0].lr``, ``teacher.top_k``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pydantic import TypeAdapter

R = TypeVar("R")


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(cls: type) -> TypeAdapter[Any]:
    # pydantic is imported on first use: building validators costs a few milliseconds per
    # class, paid by the commands that read a record, not by every import.
    if cls not in _ADAPTERS:
        from pydantic import TypeAdapter

        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def build(cls: type[R], raw: Any) -> R:
    """``raw`` (decoded YAML/JSON) validated into ``cls``. Raises pydantic's ValidationError;
    an error of our own raised by a ``__post_init__`` passes through as it is."""
    value: R = _adapter(cls).validate_python(raw)
    return value


def dump(obj: Any) -> Any:
    """``obj`` as JSON-ready Python (tuples as lists, paths as strings)."""
    return _adapter(type(obj)).dump_python(obj, mode="json")


def where(loc: Sequence[int | str], tags: Sequence[str] = ()) -> str:
    """A location as users spell it: ``students[0].lr``; union ``tags`` are left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in tags:
            out += f".{part}" if out else part
    return out
