"""Parameter types of the CLI's numeric options.

Every float option takes ``FiniteFloat``: click's FloatRange lets ``nan`` through any
range (every comparison with NaN is false) and ``inf`` through an open-ended one, and
either would run to the end and save NaN weights or loop forever. Integer options take
``BoundedInt``. Both fail with a ``CompressorError`` naming the option and its range,
which the CLI prints as one ``error:`` line (exit 2), as it does for a bad recipe field.
"""

from __future__ import annotations

import math

import click

from .errors import CompressorError


def _option(param) -> str:
    opts = getattr(param, "opts", None) or []
    return max(opts, key=len) if opts else (getattr(param, "name", None) or "value")


class _Bounded:
    kind = "number"

    def _allowed(self) -> str:
        if self.min is None and self.max is None:
            return self.kind
        return f"{self.kind} in the range {self._describe_range()}"

    def _reject(self, value, param):
        raise CompressorError(f"{_option(param)} must be {self._allowed()}; got {value!r}")


class FiniteFloat(_Bounded, click.FloatRange):
    """A FloatRange that also rejects NaN and +/-infinity."""

    name = "finite float"
    kind = "a finite number"

    def convert(self, value, param, ctx) -> float:
        try:
            rv = float(value)
        except (TypeError, ValueError, OverflowError):
            self._reject(value, param)
        if not math.isfinite(rv):
            self._reject(value, param)
        try:
            return click.FloatRange.convert(self, rv, param, ctx)
        except click.BadParameter:
            self._reject(value, param)

    def __repr__(self) -> str:
        return f"FiniteFloat {self._describe_range()}"


class BoundedInt(_Bounded, click.IntRange):
    """An IntRange whose failures name the option and range in one line."""

    name = "integer"
    kind = "an integer"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, bool):
            self._reject(value, param)
        if isinstance(value, int):
            rv = value
        else:
            try:
                rv = int(str(value).strip())
            except ValueError:
                self._reject(value, param)
        try:
            return click.IntRange.convert(self, rv, param, ctx)
        except click.BadParameter:
            self._reject(value, param)

    def __repr__(self) -> str:
        return f"BoundedInt {self._describe_range()}"
