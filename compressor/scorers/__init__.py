"""Scorers. Importing this package registers every built-in one."""

from . import baseline, head_types, persistence, redundancy, sieve_roles  # noqa: F401  (registration side effect)
from .base import SCORERS, CaptureBatch, Scorer, ScoringContext

__all__ = ["SCORERS", "CaptureBatch", "Scorer", "ScoringContext"]
