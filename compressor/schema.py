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


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _range_text(f: Field) -> str:
    if f.lo is not None and f.hi is not None:
        return f" in [{_num(f.lo)}, {_num(f.hi)}]"
    if f.lo is not None:
        return f" >= {_num(f.lo)}"
    if f.hi is not None:
        return f" <= {_num(f.hi)}"
    return ""


def _finite(value: float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond float's range
        return False


def _shown(value: Any) -> str:
    """The offending value for a message: short, on one line."""
    text = repr(value)
    return text if len(text) <= 60 and "\n" not in text else text.replace("\n", " ")[:57] + "..."


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
        # the one place recipe and scorer numbers are checked: NaN and +/-inf are never
        # numbers here, and a huge YAML integer must not overflow float() into a traceback
        is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
        if f.kind == "int":
            ok = isinstance(value, int) or (is_num and math.isfinite(value) and float(value).is_integer())
            ok = ok and is_num
            what = "an integer"
        else:
            ok = is_num and _finite(value)
            what = "a number"
        ok = ok and (f.lo is None or value >= f.lo) and (f.hi is None or value <= f.hi)
        if not ok:
            raise RecipeError(f"{where} must be {what}{_range_text(f)}; got {_shown(value)}")
        return int(value) if f.kind == "int" else float(value)
    if f.kind in _SIMPLE:
        accepts, what = _SIMPLE[f.kind]
        if not accepts(value):
            raise RecipeError(f"{where} must be {what}; got {_shown(value)}")
        return value
    if f.kind == "choice":
        if not isinstance(value, (str, type(None))) or value not in f.choices:
            raise RecipeError(f"{where} must be one of {', '.join(f.choices)}; got {_shown(value)}")
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


# Upper limits shared by recipe fields and CLI options: beyond them a run would not end
# (or not fit in memory) rather than do what was asked. torch and numpy take seeds below 2**32.
SEED_MAX = 2**32 - 1
MAX_SEQUENCES = 1_000_000  # calibration sequences
MAX_BATCH = 65_536
MAX_STEPS = 10_000_000
MAX_EPOCHS = 1_000.0
MAX_TEMPERATURE = 100.0
MAX_RUNS = 100_000  # bench timing runs
MAX_NEW_TOKENS = 4096  # bench: tokens generated per timed run
