"""Scorers. ``from compressor.scorers import SCORERS`` imports and registers every
built-in one; ``compressor.scorers.specs`` describes them without importing them (the
recipe checks use it, so validation never waits for torch)."""

from __future__ import annotations

import importlib

from .specs import SPECS

__all__ = ["SCORERS", "CaptureBatch", "Scorer", "ScoringContext"]


def __getattr__(name: str):
    if name in __all__:
        for module in sorted({s.module for s in SPECS.values()}):
            importlib.import_module(module)  # registration side effects
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
