"""A job spec from YAML (+ ``--set key=value``) or from ``job.yaml``, validated by pydantic
into ``core/job/spec.py``'s records; its errors told in one line that names the key and the fix."""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import BaseModel, ValidationError

from distillq import typed
from distillq.core.job.spec import JobSpec, LocalTeacherSpec, ServedTeacherSpec
from distillq.errors import ModelError, SpecError

TEACHER_TAGS = ("local", "served")
"""The tags of the teacher union, which pydantic puts in an error's location."""


def load_spec(
    path: Path,
    overrides: list[str] | None = None,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> JobSpec:
    """Read a YAML job spec, apply ``key=value`` overrides, validate. Raises :class:`SpecError`.

    ``prepare``: what completes the raw spec before it is validated (enqueue passes
    ``core.job.reuse.resolve``, which fills a ``from_job`` teacher from that job)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"job spec {path} does not exist; pass the path of a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None)
        why = f" ({problem})" if problem else ""
        raise SpecError(
            f"job spec {path} is not valid YAML{where}{why}: fix the syntax there"
        ) from None
    if not isinstance(raw, dict):
        raise SpecError(f"job spec {path} must be a YAML mapping (name:, dataset:, students:, ...)")
    return load_spec_dict(raw, overrides, prepare, path.parent.resolve())


def load_spec_dict(
    raw: dict[str, Any],
    overrides: list[str] | None = None,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    base: Path | None = None,
) -> JobSpec:
    """A spec given as a mapping (the Python API), as ``load_spec`` reads a file's; relative
    paths resolve against ``base`` (the current directory by default)."""
    raw = copy.deepcopy(raw)  # overrides edit it in place: the caller's dict stays as it was
    for item in overrides or []:
        apply_override(raw, item)
    if prepare is not None:
        raw = prepare(raw)
    spec_from_dict(raw)  # validate as written, so errors name the user's own values
    return spec_from_dict(resolve_paths(raw, (base or Path.cwd()).resolve()))


def local_model(ref: str, base: Path, what: str) -> str:
    """A model reference resolved against the spec's directory: the absolute path where the
    directory exists there, else the hub id as written when it is in the local Hugging Face
    cache. ``org/name`` reads both ways: the directory wins. Raises ModelError naming the
    resolved path when it is neither."""
    p = Path(ref).expanduser()
    local = p if p.is_absolute() else (base / p).resolve()
    if local.exists():
        return str(local)
    from distillq.core.job.models import (
        hub_like,
        in_hub_cache,  # only here: most specs name local dirs,
    )

    looks_like_hub = not p.is_absolute() and hub_like(ref)
    if looks_like_hub and in_hub_cache(ref):
        return ref
    hub = ", nor in the Hugging Face cache" if looks_like_hub else ""
    raise ModelError(
        f"{what} {ref!r} does not exist: not found locally (no directory {local}; model "
        f"paths are relative to the job spec){hub}; distillq does not download models: "
        "pass a local directory"
    )


def resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Every path in a raw spec, made absolute against ``base`` (the spec file's directory),
    as the dataset always was: a job means the same thing from whatever directory it is
    enqueued, and ``job.yaml`` freezes absolute paths."""
    out = dict(raw)
    if isinstance(out.get("dataset"), str):
        out["dataset"] = str((base / Path(out["dataset"]).expanduser()).resolve())
    t = out.get("teacher")
    if isinstance(t, dict) and t.get("endpoint"):
        # A served teacher's model is a name on the server; only its tokenizer is local.
        if isinstance(t.get("tokenizer"), str):
            out["teacher"] = {
                **t,
                "tokenizer": local_model(t["tokenizer"], base, "teacher tokenizer"),
            }
    elif isinstance(t, dict) and isinstance(t.get("model"), str):
        t = {**t}
        if not t["model"].startswith("ollama:"):  # a tag in Ollama's store, resolved there
            t["model"] = local_model(t["model"], base, "teacher model")
        if isinstance(t.get("tokenizer"), str):
            t["tokenizer"] = local_model(t["tokenizer"], base, "teacher tokenizer")
        out["teacher"] = t
    if isinstance(out.get("students"), list):
        out["students"] = [
            {**s, "model": local_model(s["model"], base, f"student {s.get('name')!r} model")}
            if isinstance(s, dict) and isinstance(s.get("model"), str)
            else s
            for s in out["students"]
        ]
    return out


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply ``a.b.0.c=value`` to a raw spec mapping (value parsed as YAML)."""
    if "=" not in item:
        raise SpecError(f"--set {item!r} must look like key=value (e.g. students.0.lr=1e-4)")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError(f"--set {key}: {part!r} is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = yaml.safe_load(value)
            else:
                node = node[int(part)]
        else:
            if last:
                node[part] = yaml.safe_load(value)
            else:
                node = node.setdefault(part, {})


def spec_from_dict(raw: dict[str, Any]) -> JobSpec:
    """Validate a raw spec mapping into a :class:`JobSpec`. Raises :class:`SpecError` in one
    line that names the key and the fix."""
    if not isinstance(raw, dict):
        raise SpecError(f"job spec must be a mapping, got {type(raw).__name__}")
    if isinstance(raw.get("teacher"), dict) and isinstance(raw["teacher"].get("endpoint"), str):
        # `endpoint: http://...` means a list of one
        raw = {**raw, "teacher": {**raw["teacher"], "endpoint": [raw["teacher"]["endpoint"]]}}
    try:
        return typed.build(JobSpec, raw)
    except ValidationError as e:
        raise SpecError(_one_line(e.errors()[0])) from None


def spec_from_stored(raw: dict[str, Any]) -> JobSpec:
    """A spec frozen in ``job.yaml``. Jobs written before teachers were a tagged union kept
    every served-teacher key (at its default) on a local teacher: those are dropped."""
    t = raw.get("teacher")
    if isinstance(t, dict) and not t.get("endpoint"):
        served = {f.name: f for f in dataclasses.fields(ServedTeacherSpec)}
        local = {f.name for f in dataclasses.fields(LocalTeacherSpec)}
        t = {
            k: v
            for k, v in t.items()
            if k in local or k not in served or v not in (served[k].default, [], ())
        }
        raw = {**raw, "teacher": t}
    return spec_from_dict(raw)


_SERVED_ONLY = frozenset(
    {f.name for f in dataclasses.fields(ServedTeacherSpec)}
    - {f.name for f in dataclasses.fields(LocalTeacherSpec)}
)
_KINDS = {"int": "int", "float": "float", "bool": "bool", "string": "str"}


def _one_line(err: Any) -> str:
    """pydantic's first error in the words the spec has always used."""
    loc, value, kind = tuple(err["loc"]), err.get("input"), err["type"]
    where = typed.where(loc, TEACHER_TAGS)
    owner, leaf = _at(loc[:-1]), loc[-1] if loc else ""
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        if owner is LocalTeacherSpec and leaf in _SERVED_ONLY:
            return (
                f"{where}={value} applies to an endpoint teacher: add teacher.endpoint, or "
                f"remove {where}"
            )
        known = _field_names(owner)
        prefix = typed.where(loc[:-1], TEACHER_TAGS)
        prefix = f"{prefix}." if prefix else ""
        hint = _did_you_mean(leaf, known, prefix) or f"; known keys: {sorted(known)}"
        return f"unknown key {where!r} in job spec{hint}"
    if kind == "missing":
        return f"job spec is missing {where!r}"
    if kind == "literal_error":
        choices = list(get_args(_annotation(loc)))
        return f"{where}={value!r} is not one of {choices}{_did_you_mean(value, choices)}"
    if kind in ("dataclass_type", "dict_type", "model_type", "dataclass_args_type"):
        return f"{where or 'job spec'} must be a mapping, got {type(value).__name__}"
    if kind in ("list_type", "tuple_type"):
        return f"{where} must be a list"
    base = kind.split("_")[0]
    return f"{where}={value!r} should be a {_KINDS.get(base, base)}"


def _at(loc: tuple[Any, ...]) -> Any:
    """The spec class that holds the key at ``loc`` (None where it is not a record)."""
    cls: Any = JobSpec
    for part in loc:
        if isinstance(part, int):
            continue
        if part in TEACHER_TAGS:
            cls = LocalTeacherSpec if part == "local" else ServedTeacherSpec
            continue
        cls = _record_in(get_type_hints(cls, include_extras=True).get(part))
    return cls


def _annotation(loc: tuple[Any, ...]) -> Any:
    leaf = loc[-1]
    hints = get_type_hints(_at(loc[:-1]), include_extras=True) if _at(loc[:-1]) else {}
    typ = hints.get(leaf)
    while get_origin(typ) in (Union, type(int | None), Annotated):
        typ = next(a for a in get_args(typ) if a is not type(None))
    return typ


def _record_in(typ: Any) -> Any:
    """The record class inside an annotation (``tuple[StudentSpec, ...]``, ``X | None``)."""
    if isinstance(typ, type) and (dataclasses.is_dataclass(typ) or issubclass(typ, BaseModel)):
        return typ
    for arg in get_args(typ):
        if (found := _record_in(arg)) is not None:
            return found
    return None


def _field_names(cls: Any) -> list[str]:
    if cls is None:
        return []
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    return list(cls.model_fields)


def _did_you_mean(value: Any, choices: Any, prefix: str = "") -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""
