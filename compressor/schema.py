"""Strict validation of user-given mappings (recipes, scorer params).

Messages follow scikit-learn's style and always name the field:
"recipe field 'targets.heads.ratio' must be a number in [0, 1]; got 1.5".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import RecipeError

_MISSING = object()


@dataclass(frozen=True)
class Field:
    kind: str  # "int" | "float" | "str" | "bool" | "choice" | "mapping" | "list"
    default: Any = _MISSING
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    nullable: bool = False
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def _range_text(f: Field) -> str:
    if f.lo is not None and f.hi is not None:
        return f" in [{f.lo:g}, {f.hi:g}]"
    if f.lo is not None:
        return f" >= {f.lo:g}"
    if f.hi is not None:
        return f" <= {f.hi:g}"
    return ""


# kinds checked by type alone: (accepts, description for the message)
_SIMPLE = {
    "str": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "mapping": (lambda v: isinstance(v, dict), "a mapping"),
    "list": (lambda v: isinstance(v, list), "a list"),
}


def check_value(value: Any, f: Field, where: str) -> Any:
    if value is None:
        if f.nullable:
            return None
        if not f.required and f.default is None:
            return None
    if f.kind == "float" and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 1e-4 as a string; a number is what the user meant
        try:
            value = float(value)
        except ValueError:
            pass
    if f.kind in ("int", "float"):
        is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
        if f.kind == "int":
            ok = is_num and float(value).is_integer()
            what = "an integer"
        else:
            ok = is_num and math.isfinite(float(value))
            what = "a number"
        ok = ok and (f.lo is None or value >= f.lo) and (f.hi is None or value <= f.hi)
        if not ok:
            raise RecipeError(f"{where} must be {what}{_range_text(f)}; got {value!r}")
        return int(value) if f.kind == "int" else float(value)
    if f.kind in _SIMPLE:
        accepts, what = _SIMPLE[f.kind]
        if not accepts(value):
            raise RecipeError(f"{where} must be {what}; got {value!r}")
        return value
    if f.kind == "choice":
        if value not in f.choices:
            raise RecipeError(f"{where} must be one of {', '.join(f.choices)}; got {value!r}")
        return value
    raise ValueError(f.kind)


def field_name(noun: str, path: str, name: str) -> str:
    return f"{noun} field '{path + '.' if path else ''}{name}'"


def check_mapping(data: Any, spec: dict[str, Field], path: str = "", noun: str = "recipe") -> dict[str, Any]:
    """Validate ``data`` against ``spec``; return a dict with defaults filled in.

    ``path`` is the mapping's dotted place in the recipe ("" for the top level), used
    to name fields in messages: "recipe field 'calibration.batch_size' ...".
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        what = f"{noun} field '{path}'" if path else noun
        raise RecipeError(f"{what} must be a mapping; got {data!r}")
    unknown = sorted(set(map(str, data)) - set(spec))
    if unknown:
        raise RecipeError(
            f"unknown {field_name(noun, path, unknown[0])}; allowed: {', '.join(sorted(spec))}"
        )
    out = {}
    for name, f in spec.items():
        full = field_name(noun, path, name)
        if name in data:
            out[name] = check_value(data[name], f, full)
        elif f.required:
            raise RecipeError(f"{full} is required")
        else:
            out[name] = f.default
    return out
