"""Our error wording over pydantic's structured errors: file, key path, problem, "did you mean"."""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from poller.config.values import toml_key, type_name
from poller.errors import ConfigError

__all__ = ["IfEmpty", "Items", "Loc", "Source", "key_path", "problem", "translate"]

Loc = Sequence[str | int]

# The error type of the checks written for poller: their message is already ours.
_PROBLEM = "poller_problem"


@dataclass(frozen=True, slots=True)
class Items:
    """Declaration metadata: what an array of this type holds, in "expected an array of X"."""

    plural: str


@dataclass(frozen=True, slots=True)
class IfEmpty:
    """Declaration metadata: what to say after "must not be empty" for this array."""

    hint: str


def problem(text: str) -> PydanticCustomError:
    """An error for a validator to raise whose message is ``text`` as written."""
    # The text goes in the context, not the template, so braces in it stay as they are.
    return PydanticCustomError(_PROBLEM, "{problem}", {"problem": text})


def key_path(loc: Loc) -> str:
    """The TOML key of a location: ``("webhooks", 0, "url")`` is ``webhooks[0].url``."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{toml_key(part)}" if key else toml_key(part)
    return key


@dataclass(frozen=True, slots=True)
class Source:
    """The config file being read and the environment its secrets may come from."""

    path: Path
    environ: Mapping[str, str]

    def error(self, loc: Loc, text: str) -> ConfigError:
        """A ConfigError naming this file and the key at ``loc`` (none for an empty loc)."""
        return ConfigError(self.path, key_path(loc) or None, text)


def translate(src: Source, error: ValidationError, root: type[BaseModel]) -> ConfigError:
    """The one error to report for a failed validation of ``root``, in our wording."""
    details = error.errors(include_url=False)
    # A misspelt key is reported as the typo it is, not as the missing key it was meant to be.
    first = next((d for d in details if d["type"] == "extra_forbidden"), details[0])
    return src.error(first["loc"], _problem(first, root))


def _problem(error: ErrorDetails, root: type[BaseModel]) -> str:
    kind, loc, value = error["type"], error["loc"], error["input"]
    parent, declared, annotation = _site(root, loc)
    got = type_name(value)
    if kind == _PROBLEM:
        return str((error.get("ctx") or {})["problem"])
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields if parent else []))
        return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
    if kind == "missing":
        return "is required"
    if kind in ("model_type", "model_attributes_type"):
        # A table in an array of tables is written [[name]], a table of its own [name].
        brackets = f"[[{key_path(loc[:-1])}]]" if isinstance(loc[-1], int) else f"[{key_path(loc)}]"
        return f"expected a table ({brackets}), got {got}"
    if kind == "list_type":
        return f"expected an array of {_items(annotation, loc)}, got {got}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"must be {_bounds(declared)}, got {value!r}"
    if kind == "too_short":
        hint = next((m.hint for m in declared if isinstance(m, IfEmpty)), None)
        return f"must not be empty ({hint})" if hint else "must not be empty"
    # A check without wording of its own yet: pydantic's message never quotes the value.
    return error["msg"][:1].lower() + error["msg"][1:]


_EXPECTED = {
    "int_type": "an integer",
    "bool_type": "a boolean (true or false)",
    "string_type": "a string",
    "float_type": "a number",
    "dict_type": "a table",
}


def _bounds(declared: list[Any]) -> str:
    low = next((m.ge for m in declared if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in declared if isinstance(m, annotated_types.Le)), None)
    if low is not None and high is not None:
        return f"from {low} to {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def _items(annotation: object, loc: Loc) -> str:
    args = get_args(annotation)
    item, declared = _strip(args[0]) if args else (None, [])
    if _is_table(item):
        return f"tables ([[{key_path(loc)}]])"
    return next((m.plural for m in declared if isinstance(m, Items)), "values")


def _site(root: type[BaseModel], loc: Loc) -> tuple[type[BaseModel] | None, list[Any], Any]:
    """The table holding ``loc``, what its declaration says (constraints, markers), its type.

    The table is None inside an array or a free-form table (headers).
    """
    parent: type[BaseModel] | None = None
    declared: list[Any] = []
    annotation: Any = root
    for part in loc:
        if isinstance(part, str) and _is_table(annotation):
            parent, field = annotation, annotation.model_fields.get(part)
            if field is None:
                return parent, [], None
            annotation, declared = _strip(field.annotation)
            declared = [*field.metadata, *declared]
        else:  # an array index or a key of a free-form table: the element type
            args = get_args(annotation)
            parent = None
            annotation, declared = _strip(args[-1]) if args else (None, [])
    return parent, declared, annotation


def _strip(annotation: Any) -> tuple[Any, list[Any]]:
    """``annotation`` without ``Annotated`` or ``| None``, and the metadata taken off it."""
    declared: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *metadata = get_args(annotation)
            for item in metadata:
                # Field(ge=1) inside Annotated keeps its constraints in its own metadata.
                declared.extend(item.metadata if isinstance(item, FieldInfo) else [item])
            continue
        if origin in (Union, types.UnionType):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            if len(rest) == 1:
                annotation = rest[0]
                continue
        return annotation, declared


def _is_table(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
